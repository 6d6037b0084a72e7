"""What every `lsl` command reads: the Dagster instance, the code location and the experiments' files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from lsl_dagster import graph
from lsl_dagster.records import Comparison
from lsl_dagster.results.instance import Stage, latest_comparisons, stages_of
from lsl_dagster.spec.experiment_files import optional_arms, spec_versions


class CliError(Exception):
    pass


def open_instance() -> dg.DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        raise CliError("DAGSTER_HOME is not set: point it at the Dagster instance the experiments ran in")
    try:
        return dg.DagsterInstance.get()
    except dg.DagsterInvariantViolationError as exc:  # not a directory, not absolute, bad dagster.yaml
        raise CliError(str(exc)) from None


@dataclass
class CodeLocation:
    """What `lsl` needs of the code location, built now rather than imported, so that it follows
    LSL_DATA_DIR / LSL_RUNS_DIR as they are set now."""

    data_dir: Path
    runs_dir: Path
    experiments: list[str]
    stages: dict[str, Stage]
    arms: dict[str, tuple[str, ...]]  # experiment -> the optional arms its file lists (absent: none)


def code_location() -> CodeLocation:
    from lsl_dagster.definitions import build_definitions

    defs = build_definitions()
    specs = defs.resolve_all_asset_specs()
    (stage1,) = [s for s in specs if s.key == dg.AssetKey(graph.STAGE1.asset)]
    workspace = defs.resources["workspace"]
    return CodeLocation(
        data_dir=Path(workspace.data_dir),
        runs_dir=Path(workspace.runs_dir),
        experiments=list(stage1.partitions_def.get_partition_keys()),
        stages=stages_of(specs),
        arms=listed_arms(Path(workspace.data_dir)),
    )


def listed_arms(data_dir: Path) -> dict[str, tuple[str, ...]]:
    """experiment -> the optional arms its file lists, for the experiments that list any."""
    arms: dict[str, tuple[str, ...]] = {}
    for arm, experiments in optional_arms(data_dir).items():
        for e in experiments:
            arms[e] = (*arms.get(e, ()), arm)
    return arms


def runs_dir() -> Path:
    """The runs directory in force now (LSL_RUNS_DIR), where stored relative paths are read."""
    from lsl_dagster.definitions import directories

    return directories()[1]


def check_known(requested: Sequence[str], known: Sequence[str]) -> None:
    if unknown := [e for e in requested if e not in known]:
        raise CliError(f"unknown experiment(s): {', '.join(unknown)} (known: {', '.join(known) or 'none'})")


def spec_hashes(data_dir: Path, ids: Sequence[str]) -> dict[str, str | None]:
    """Each experiment's current spec hash; None for an invalid file."""
    return {e: None if v.startswith("invalid-") else v for e, v in spec_versions(data_dir, ids).items()}


def comparisons(
    instance: dg.DagsterInstance, experiments: Sequence[str]
) -> dict[str, tuple[Comparison, str]]:
    """The latest comparison of each experiment asked for (default: all) and where it is stored; an error
    naming what is unknown or not compared yet."""
    found = latest_comparisons(instance, list(experiments) or None, runs_dir())
    if missing := [e for e in experiments if e not in found]:
        check_known(missing, code_location().experiments)
        raise CliError(f"no comparison has been materialized for {', '.join(missing)} yet (see `lsl status`)")
    if not found:
        raise CliError("no comparison has been materialized yet in this instance")
    return found
