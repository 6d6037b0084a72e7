"""Keeps the UI's staleness current: observes the experiment files while `dagster dev` runs."""

import json
from pathlib import Path

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    PartitionsDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from lsl_dagster.defs.resources import Workspace
from lsl_dagster.results.instance import FILE
from lsl_dagster.spec.experiment_files import spec_versions

# The tag Dagster reads an observation's data version from (what observable source assets emit).
DATA_VERSION_TAG = "dagster/data_version"


def experiment_files_sensor(partitions: PartitionsDefinition) -> SensorDefinition:
    @sensor(name="experiment_files", minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
    def _sensor(context: SensorEvaluationContext, workspace: Workspace) -> SensorResult:
        """Records a new version of experiment_file for every experiment whose file changed, so its
        downstream assets show as stale without anyone clicking "Observe"."""
        seen = json.loads(context.cursor or "{}")
        versions = spec_versions(Path(workspace.data_dir), partitions.get_partition_keys())
        events = [
            AssetObservation(FILE, partition=key, tags={DATA_VERSION_TAG: version})
            for key, version in versions.items()
            if seen.get(key) != version
        ]
        return SensorResult(asset_events=events, cursor=json.dumps(versions))

    return _sensor
