"""The code location: `dagster dev` and `dagster asset materialize -m lsl_dagster.definitions` load `defs`."""

from __future__ import annotations

import gc

# The process loading the code location keeps what it has imported for its whole life (Dagster, its CLI
# and storage): frozen, it is not re-scanned by the full collections that importing DSPy and SciPy below
# sets off, nor by those of the run (bench/README.md, overhead.py). Frozen again once `defs` is built.
gc.freeze()

from pathlib import Path

from dagster import AssetSelection, Definitions, EnvVar, define_asset_job

from lsl_dagster.defs.assets import ARMS_GROUP, GROUP, build_assets
from lsl_dagster.defs.campaign_assets import CAMPAIGN_GROUP, build_campaign_assets
from lsl_dagster.defs.checks import build_checks
from lsl_dagster.defs.executors import executor_for
from lsl_dagster.defs.io_managers import PydanticJsonIOManager
from lsl_dagster.defs.partitions import experiments_partitions
from lsl_dagster.defs.resources import Workspace
from lsl_dagster.defs.sensors import experiment_files_sensor
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.settings import Settings
from lsl_dagster.spec.experiment_files import experiment_ids, optional_arms, scan_campaigns


def directories(
    data_dir: Path | None = None, runs_dir: Path | None = None, settings: Settings | None = None
) -> tuple[Path, Path]:
    """The data directory (experiments, campaigns, tasks) and the runs directory (outputs): the ones
    given, else LSL_DATA_DIR and LSL_RUNS_DIR, else data/ and data/runs/."""
    settings = settings or Settings.from_env()
    data_dir = data_dir or settings.data_dir
    return data_dir, runs_dir or settings.runs_dir or data_dir / "runs"


def build_definitions(
    data_dir: Path | None = None, runs_dir: Path | None = None, language_models: LanguageModels | None = None
) -> Definitions:
    settings = Settings.from_env()
    data_dir, runs_dir = directories(data_dir, runs_dir, settings)
    outputs_url = settings.outputs_url
    partitions = experiments_partitions(experiment_ids(data_dir))
    valid, errors = scan_campaigns(data_dir)
    grids = {name: sorted(specs) for name, (_, specs) in valid.items()}
    assets = [*build_assets(partitions, optional_arms(data_dir)), *build_campaign_assets(grids, errors)]
    return Definitions(
        assets=assets,
        asset_checks=build_checks(partitions),
        sensors=[experiment_files_sensor(partitions)],
        jobs=[
            define_asset_job(
                "lsl_experiment",
                selection=AssetSelection.groups(GROUP, include_sources=True),
                partitions_def=partitions,
                description="Observe the experiment file, then run every stage of one experiment.",
            ),
            define_asset_job(
                "lsl_experiment_with_arms",
                selection=AssetSelection.groups(GROUP, ARMS_GROUP, include_sources=True),
                partitions_def=partitions,
                description="lsl_experiment plus the optional arms, for an experiment that lists `arms:`.",
            ),
            define_asset_job(
                "lsl_campaign",
                selection=AssetSelection.groups(CAMPAIGN_GROUP),
                description="A campaign with a comparison for every experiment: its summary and matrix.",
            ),
        ],
        # Stages of one experiment run one at a time anyway (they share its budget), so steps run
        # in-process by default; experiments run in parallel as separate runs. LSL_EXECUTOR chooses.
        executor=executor_for(settings),
        resources={
            # Past one disk: outputs and the files they point to (predictions, plots) go to LSL_OUTPUTS_URL
            # (s3://bucket/prefix), call logs and response caches to LSL_CACHE_URL (a PostgreSQL
            # database), both reached by every worker; else all of it is in the runs directory.
            "workspace": Workspace(
                data_dir=str(data_dir),
                runs_dir=str(runs_dir),
                outputs_url=outputs_url,
                # Read when a step starts, shown in the UI by name only: the URL may hold a password.
                cache_url=EnvVar("LSL_CACHE_URL") if settings.cache_url_set else None,
            ),
            "language_models": language_models or LanguageModels(),
            "io_manager": PydanticJsonIOManager(runs_dir=outputs_url or str(runs_dir)),
        },
    )


defs = build_definitions()
gc.freeze()
