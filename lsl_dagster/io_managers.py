"""The IO manager: Pydantic models as JSON files that name their experiment; no pickle anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import get_args, get_origin

from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import BaseModel

from lsl_dagster.files import atomic_write_text
from lsl_dagster.models import check_slug


class PydanticJsonIOManager(ConfigurableIOManager):
    """Stores each partition at <runs_dir>/<experiment_id>/<asset>.json, written atomically; its `path`
    metadata is relative to the runs directory."""

    runs_dir: str

    def _path(self, context: OutputContext | InputContext, partition: str) -> Path:
        return Path(self.runs_dir) / check_slug(partition) / f"{'__'.join(context.asset_key.path)}.json"

    def handle_output(self, context: OutputContext, obj: BaseModel) -> None:
        if not isinstance(obj, BaseModel):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a Pydantic model, got {type(obj)}"
            )
        path = self._path(context, context.asset_partition_key)
        atomic_write_text(path, obj.model_dump_json(indent=2))
        # Relative to the runs directory: the runs directory may move (LSL_RUNS_DIR), the path stays valid.
        relative = path.relative_to(self.runs_dir).as_posix()
        context.add_output_metadata({"path": MetadataValue.path(relative)})

    def load_input(self, context: InputContext) -> BaseModel | dict[str, BaseModel]:
        """One partition as its model; several (a campaign's experiments) as dict[partition, model]."""
        annotation = context.dagster_type.typing_type
        many = get_origin(annotation) is dict
        model = get_args(annotation)[1] if many else annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"inputs loaded by {type(self).__name__} must be annotated with a Pydantic model")
        partitions = context.asset_partition_keys if many else [context.asset_partition_key]
        loaded = {
            key: model.model_validate_json(self._path(context, key).read_text(encoding="utf-8"))
            for key in partitions
        }
        return loaded if many else loaded[partitions[0]]
