"""The IO manager: Pydantic models as JSON files that name their experiment; no pickle anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar, get_args, get_origin

from dagster import AssetKey, ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import BaseModel

from lsl_dagster.spec.strict import check_slug
from lsl_dagster.storage import outputs as storage

M = TypeVar("M", bound=BaseModel)


class PydanticJsonIOManager(ConfigurableIOManager):
    """Stores each partition at <runs_dir>/<experiment_id>/<asset>.json, replaced whole (atomically).
    runs_dir is a directory or an s3:// URL (lsl_dagster.storage.outputs): outputs every worker reaches. The
    `path` metadata of a local output is relative to the runs directory, so the directory may move."""

    runs_dir: str

    def _location(self, asset_key: AssetKey, partition: str) -> str:
        return storage.join(self.runs_dir, check_slug(partition), f"{'__'.join(asset_key.path)}.json")

    def load(self, asset_key: AssetKey, partition: str, model: type[M]) -> M:
        """One stored partition of an asset (what the asset checks read)."""
        return model.model_validate_json(storage.read_text(self._location(asset_key, partition)))

    def handle_output(self, context: OutputContext, obj: BaseModel) -> None:
        if not isinstance(obj, BaseModel):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a Pydantic model, got {type(obj)}"
            )
        location = self._location(context.asset_key, context.asset_partition_key)
        storage.write_text(location, obj.model_dump_json(indent=2))
        # Relative to the runs directory: it may move (LSL_RUNS_DIR) and the path stays valid.
        if not storage.is_remote(location):
            location = Path(location).relative_to(self.runs_dir).as_posix()
        context.add_output_metadata({"path": MetadataValue.path(location)})

    def load_input(self, context: InputContext) -> BaseModel | dict[str, BaseModel]:
        """One partition as its model; several (a campaign's experiments) as dict[partition, model]."""
        annotation = context.dagster_type.typing_type
        many = get_origin(annotation) is dict
        model = get_args(annotation)[1] if many else annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"inputs loaded by {type(self).__name__} must be annotated with a Pydantic model")
        partitions = context.asset_partition_keys if many else [context.asset_partition_key]
        loaded = {key: self.load(context.asset_key, key, model) for key in partitions}
        return loaded if many else loaded[partitions[0]]
