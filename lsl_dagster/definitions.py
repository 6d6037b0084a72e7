"""The code location: `dagster dev` and `dagster asset materialize -m lsl_dagster.definitions` load `defs`."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import AssetSelection, Definitions, define_asset_job

from lsl_dagster.assets import GROUP, build_assets, build_campaign_assets
from lsl_dagster.checks import build_checks
from lsl_dagster.executors import executor_from_env
from lsl_dagster.experiments import campaigns, experiment_ids
from lsl_dagster.io_managers import PydanticJsonIOManager
from lsl_dagster.lm import LanguageModels
from lsl_dagster.partitions import experiments_partitions
from lsl_dagster.sensors import experiment_files_sensor
from lsl_dagster.workspace import PROJECT_DIR, Workspace


def build_definitions(
    data_dir: Path | None = None, runs_dir: Path | None = None, language_models: LanguageModels | None = None
) -> Definitions:
    data_dir = data_dir or Path(os.environ.get("LSL_DATA_DIR", PROJECT_DIR / "data"))
    runs_dir = runs_dir or Path(os.environ.get("LSL_RUNS_DIR", data_dir / "runs"))
    partitions = experiments_partitions(experiment_ids(data_dir))
    grids = {name: sorted(specs) for name, (_, specs) in campaigns(data_dir).items()}
    assets = [*build_assets(partitions), *build_campaign_assets(grids)]
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
            )
        ],
        # Stages of one experiment run one at a time anyway (they share its budget), so steps run
        # in-process by default; experiments run in parallel as separate runs. LSL_EXECUTOR chooses.
        executor=executor_from_env(),
        resources={
            "workspace": Workspace(data_dir=str(data_dir), runs_dir=str(runs_dir)),
            "language_models": language_models or LanguageModels(),
            # Asset outputs go to LSL_OUTPUTS_URL when set (s3://bucket/prefix: object storage every
            # worker reaches), else beside the call log and predictions in the runs directory.
            "io_manager": PydanticJsonIOManager(runs_dir=os.environ.get("LSL_OUTPUTS_URL") or str(runs_dir)),
        },
    )


defs = build_definitions()
