"""Experiment files: data/experiments/<experiment_id>.yaml, validated into an ExperimentSpec."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from lsl_dagster.settings import Settings
from lsl_dagster.spec.campaign import CampaignSpec
from lsl_dagster.spec.campaign_files import CampaignError, expand, load_campaign
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.spec.strict import check_slug
from lsl_dagster.spec.yaml_files import load_yaml
from lsl_dagster.tasks.task import Task, TaskDataError, load_task

log = logging.getLogger(__name__)


class ExperimentError(ValueError):
    """An experiment id or file is invalid; the message says which and why."""


def scan_campaigns(
    data_dir: Path, *, only_capped: bool = False
) -> tuple[dict[str, tuple[CampaignSpec, dict[str, ExperimentSpec]]], dict[str, str]]:
    """Every campaign file: the valid ones with their expanded experiments, and name -> error for the
    others. An invalid campaign spoils only itself: nothing of it runs, every other campaign does.
    `only_capped`: just the campaigns with a max_cost_usd of their own (the others are not expanded)."""
    found, errors = {}, {}
    files = set(_file_ids(data_dir))
    for path in sorted((data_dir / "campaigns").glob("*.yaml")):
        try:
            name = check_slug(path.stem)
        except ValueError as exc:
            log.warning("ignoring %s: %s", path, exc)
            continue
        try:
            campaign = load_campaign(path)
            if only_capped and campaign.max_cost_usd is None:
                continue
            specs = expand(campaign, path, data_dir / "tasks")
            if clash := sorted(files & (set(specs) | {name})):
                raise CampaignError(f"{path}: reuses the experiment id(s) {clash} of data/experiments/")
        except CampaignError as exc:
            errors[name] = str(exc)
            continue
        found[name] = (campaign, specs)
    return found, errors


def campaigns(data_dir: Path) -> dict[str, tuple[CampaignSpec, dict[str, ExperimentSpec]]]:
    """The valid campaigns with their expanded experiments."""
    return scan_campaigns(data_dir)[0]


def _file_ids(data_dir: Path) -> list[str]:
    ids = []
    for path in sorted((data_dir / "experiments").glob("*.yaml")):
        try:
            ids.append(check_slug(path.stem))
        except ValueError as exc:
            log.warning("ignoring %s: %s", path, exc)
    return ids


def experiment_ids(data_dir: Path) -> list[str]:
    """Ids of the experiment files (a file whose name is not a safe id is reported and left out; an
    invalid file is still an experiment, whose runs fail with its error) and of every valid campaign's
    experiments."""
    ids = _file_ids(data_dir)
    for _, specs in campaigns(data_dir).values():
        ids += specs
    return sorted(ids)


def optional_arms(data_dir: Path) -> dict[str, list[str]]:
    """Per optional arm, the experiments (files and campaign cells) that list it in `arms:`; an invalid
    file lists none (its runs fail with its error)."""
    specs = dict(s for _, cells in campaigns(data_dir).values() for s in cells.items())
    for experiment_id in _file_ids(data_dir):
        try:
            specs[experiment_id] = load_experiment(data_dir, experiment_id)
        except ExperimentError:
            continue
    listing: dict[str, list[str]] = {}
    for experiment_id, spec in sorted(specs.items()):
        for arm in spec.arms:
            listing.setdefault(arm, []).append(experiment_id)
    return listing


def problems(data_dir: Path) -> dict[str, str]:
    """Everything wrong with the experiment and campaign files, by file: what `lsl validate` reports."""
    found: dict[str, str] = {}
    for path in sorted((data_dir / "experiments").glob("*.yaml")):
        try:
            spec = load_experiment(data_dir, check_slug(path.stem))
            check_fits(spec, load_task(spec.task, data_dir / "tasks"), path)
        except (ValueError, TaskDataError) as exc:  # ExperimentError and an unsafe file name
            found[str(path)] = str(exc)
    for name, error in scan_campaigns(data_dir)[1].items():
        found[str(data_dir / "campaigns" / f"{name}.yaml")] = error
    for path in sorted((data_dir / "campaigns").glob("*.yaml")):
        try:
            check_slug(path.stem)
        except ValueError as exc:
            found[str(path)] = str(exc)
    return found


def spec_versions(data_dir: Path, experiment_ids: Sequence[str]) -> dict[str, str]:
    """The data version of each experiment: its validated spec's hash, so comments and formatting do not
    count; an invalid file gets its raw hash, so that fixing it shows as a change too."""
    # Campaign cells are expanded only when an experiment asked for has no file of its own.
    files = set(_file_ids(data_dir))
    cells = (
        {e: spec for _, specs in campaigns(data_dir).values() for e, spec in specs.items()}
        if set(experiment_ids) - files
        else {}
    )
    versions = {}
    for experiment_id in experiment_ids:
        path = data_dir / "experiments" / f"{experiment_id}.yaml"
        try:
            spec = (
                cells[experiment_id] if experiment_id in cells else load_experiment(data_dir, experiment_id)
            )
            versions[experiment_id] = spec.spec_hash
        except ExperimentError:
            raw = path.read_bytes() if path.exists() else b""
            versions[experiment_id] = "invalid-" + hashlib.sha256(raw).hexdigest()[:16]
    return versions


def check_fits(spec: ExperimentSpec, task: Task, path: Path | None = None) -> None:
    """What only the task can tell about a valid spec, before any call: `evaluation.limit` within the split
    when the file sets it (a larger one is refused rather than quietly clamped, so the experiment evaluates
    what its file says; the default limit takes what the split has)."""
    split, limit = spec.evaluation.split, spec.evaluation.limit
    size = task.sizes[split]
    if limit is not None and limit > size and "limit" in spec.evaluation.model_fields_set:
        where = path or f"experiment {spec.experiment_id}"
        raise ExperimentError(
            f"{where}: evaluation.limit={limit} is larger than the {split} split of task {task.name!r} "
            f"({size} examples); set evaluation.limit to at most {size}"
        )


def load_experiment(data_dir: Path, experiment_id: str) -> ExperimentSpec:
    try:
        check_slug(experiment_id)
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None
    path = data_dir / "experiments" / f"{experiment_id}.yaml"
    if not path.is_file():
        for _, specs in campaigns(data_dir).values():
            if experiment_id in specs:
                return specs[experiment_id]
        raise ExperimentError(f"no experiment file {path} and no campaign defines {experiment_id!r}")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping of experiment settings")
    try:
        spec = ExperimentSpec.model_validate(raw, context=Settings.from_env().validation_context())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ExperimentError(f"{path}: {problems}") from None
    if spec.experiment_id != experiment_id:
        raise ExperimentError(f"{path}: experiment_id {spec.experiment_id!r} does not match the file name")
    return spec
