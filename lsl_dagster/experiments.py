"""Experiment files: data/experiments/<experiment_id>.yaml, validated into an ExperimentSpec."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from lsl_dagster.campaigns import CampaignError, expand, load_campaign
from lsl_dagster.models import CampaignSpec, ExperimentSpec, check_slug

log = logging.getLogger(__name__)


class ExperimentError(ValueError):
    """An experiment id or file is invalid; the message says which and why."""


def campaigns(data_dir: Path) -> dict[str, tuple[CampaignSpec, dict[str, ExperimentSpec]]]:
    """Every campaign file with its expanded experiments; an invalid campaign raises (nothing of it runs)."""
    found = {}
    for path in sorted((data_dir / "campaigns").glob("*.yaml")):
        campaign = load_campaign(path)
        found[campaign.campaign] = (campaign, expand(campaign, path, data_dir / "tasks"))
    return found


def _file_ids(data_dir: Path) -> list[str]:
    ids = []
    for path in sorted((data_dir / "experiments").glob("*.yaml")):
        try:
            ids.append(check_slug(path.stem))
        except ValueError as exc:
            log.warning("ignoring %s: %s", path, exc)
    return ids


def experiment_ids(data_dir: Path) -> list[str]:
    """Ids of the experiment files (a file whose name is not a safe id is reported and left out) and of
    every campaign's experiments."""
    ids = _file_ids(data_dir)
    for name, (_, specs) in campaigns(data_dir).items():
        clash = sorted(set(ids) & (set(specs) | {name}))
        if clash:
            raise CampaignError(f"campaign {name!r} reuses the experiment id(s) {clash} of data/experiments/")
        ids += specs
    return sorted(ids)


def spec_versions(data_dir: Path, experiment_ids: Sequence[str]) -> dict[str, str]:
    """The data version of each experiment: its validated spec's hash, so comments and formatting do not
    count; an invalid file gets its raw hash, so that fixing it shows as a change too."""
    cells = {e: spec for _, specs in campaigns(data_dir).values() for e, spec in specs.items()}
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
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping of experiment settings")
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ExperimentError(f"{path}: {problems}") from None
    if spec.experiment_id != experiment_id:
        raise ExperimentError(f"{path}: experiment_id {spec.experiment_id!r} does not match the file name")
    return spec
