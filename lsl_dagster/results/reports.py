"""`lsl` views over the Dagster instance beyond the results table: what hardening changed (`lsl results
--prompts`) and a campaign's transfer matrix (`lsl campaign matrix NAME`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import dagster as dg
from pydantic import BaseModel

from lsl_dagster.defs.metadata import matrix_cell_text
from lsl_dagster.records import PromptCandidate, TransferMatrix
from lsl_dagster.results.prompt_diff import diff_text, predictor_diffs
from lsl_dagster.spec.experiment import SIMULATED as LABEL
from lsl_dagster.storage import outputs as storage

M = TypeVar("M", bound=BaseModel)


class ReportError(Exception):
    """What was asked for is not in the instance; the message says what to materialize."""


def located(stored: str) -> str:
    """Where a path stored in outputs or metadata is now: an s3:// object as it is; a file relative to the
    runs directory under the one LSL_RUNS_DIR names now, wherever the runs directory was then (an absolute
    path, as older outputs have, stays as it is)."""
    if storage.is_remote(stored):
        return stored
    from lsl_dagster.definitions import directories  # the code location, loaded only when a path is read

    return str(directories()[1] / stored)


def latest(instance: dg.DagsterInstance, asset: str, partition: str, model: type[M]) -> tuple[M, str]:
    """The latest materialized value of one asset partition, read from where its metadata says (a path
    relative to the runs directory or an object-storage URL)."""
    filter_ = dg.AssetRecordsFilter(dg.AssetKey(asset), asset_partitions=[partition])
    records = instance.fetch_materializations(filter_, limit=1).records
    if not records:
        raise ReportError(f"{asset} has not been materialized for {partition} yet")
    path = located(str(records[0].asset_materialization.metadata["path"].value))
    try:
        return model.model_validate_json(storage.read_text(path)), path
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {asset} of {partition} named in the instance: {exc}") from None


def prompt_changes(instance: dg.DagsterInstance, experiments: Sequence[str]) -> str:
    """Per experiment and predictor: the unified diff from the Stage 1 prompt to the hardened one."""
    sections = []
    for experiment in experiments:
        stage1, _ = latest(instance, "stage1_prompt", experiment, PromptCandidate)
        stage2, _ = latest(instance, "stage2_hardened_prompt", experiment, PromptCandidate)
        label = " (sim)" if stage1.simulated or stage2.simulated else ""
        sections.append(
            f"== {experiment}{label}: what Stage 2 changed in the Stage 1 prompt\n"
            + diff_text(predictor_diffs(stage1, stage2))
        )
    return "\n\n".join(sections)


def matrix_table(matrix: TransferMatrix) -> str:
    """One block per difference: rows = large models, columns = small models, mean [95% CI] p Holm p."""
    names = list(dict.fromkeys(name for cell in matrix.cells for name in cell.differences))
    lines = [
        f"transfer matrix of campaign {matrix.campaign}: LSL's paired differences, mean across "
        "experiments (tasks x optimizers x seeds) with 95% t-intervals, t-test p and Holm p over all cells"
    ]
    for name in names:
        header = [name, *matrix.small_models]
        rows = []
        for large in matrix.large_models:
            row = [large]
            for small in matrix.small_models:
                cell = matrix.cell(large, small)
                value = cell.differences.get(name) if cell else None
                row.append("not run" if value is None else matrix_cell_text(value))
            rows.append(row)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines.append("")
        lines += [
            "  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
        ]
    if matrix.simulated:
        lines.append(LABEL)
    return "\n".join(lines)
