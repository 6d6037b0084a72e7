"""The IO manager: Pydantic models as JSON files that name their experiment; no pickle anywhere."""

from __future__ import annotations

from typing import get_args, get_origin

from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import BaseModel

from lsl_dagster import storage
from lsl_dagster.models import check_slug


class PydanticJsonIOManager(ConfigurableIOManager):
    """Stores each partition at <runs_dir>/<experiment_id>/<asset>.json, replaced whole (atomically).
    runs_dir is a directory or an s3:// URL (lsl_dagster.storage): outputs every worker reaches."""

    runs_dir: str

    def _location(self, context: OutputContext | InputContext, partition: str) -> str:
        return storage.join(self.runs_dir, check_slug(partition), f"{'__'.join(context.asset_key.path)}.json")

    def handle_output(self, context: OutputContext, obj: BaseModel) -> None:
        if not isinstance(obj, BaseModel):
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return a Pydantic model, got {type(obj)}"
            )
        location = self._location(context, context.asset_partition_key)
        storage.write_text(location, obj.model_dump_json(indent=2))
        context.add_output_metadata({"path": MetadataValue.path(location)})

    def load_input(self, context: InputContext) -> BaseModel | dict[str, BaseModel]:
        """One partition as its model; several (a campaign's experiments) as dict[partition, model]."""
        annotation = context.dagster_type.typing_type
        many = get_origin(annotation) is dict
        model = get_args(annotation)[1] if many else annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"inputs loaded by {type(self).__name__} must be annotated with a Pydantic model")
        partitions = context.asset_partition_keys if many else [context.asset_partition_key]
        loaded = {
            key: model.model_validate_json(storage.read_text(self._location(context, key)))
            for key in partitions
        }
        return loaded if many else loaded[partitions[0]]
