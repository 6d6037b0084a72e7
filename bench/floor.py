"""Dagster's floor: the experiment's asset graph with steps that do nothing, as a code location.

    LSL_BENCH_GRAPH=graph.json dagster asset materialize -d bench -m floor --select group:lsl --partition ID

overhead.py writes graph.json from lsl_dagster's own definitions (`graph_of`): the same assets, inputs,
dependency on the observed experiment file, pool and asset checks, one partition. What a run of this
graph costs over `import dagster` is what Dagster itself adds to any experiment, whatever lsl_dagster does:
the CLI, the instance, the run and its events, the pool's slots, the checks. It imports nothing but Dagster.
"""

import gc
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg

GRAPH = "LSL_BENCH_GRAPH"


def graph_of(defs: dg.Definitions, group: str, partition: str) -> dict[str, Any]:
    """The shape of one group of `defs` (assets, their inputs and deps, pools, checks) as JSON."""
    specs = [s for s in defs.resolve_all_asset_specs() if s.group_name == group]
    nodes = {s.key: defs.resolve_assets_def(s.key) for s in specs}
    materialized = {key for key, node in nodes.items() if node.is_materializable}
    assets, observed = [], []
    for spec in specs:
        node = nodes[spec.key]
        if not node.is_materializable:
            observed.append(spec.key.to_user_string())
            continue
        loaded = {name: key for name, key in node.keys_by_input_name.items() if key in materialized}
        assets.append(
            {
                "key": spec.key.to_user_string(),
                "inputs": {name: key.to_user_string() for name, key in loaded.items()},
                "deps": [d.asset_key.to_user_string() for d in spec.deps if d.asset_key not in materialized],
                "pool": node.op.pool,
            }
        )
    checks = [
        {
            "name": c.op.name,
            "specs": [[s.asset_key.to_user_string(), s.name] for s in c.check_specs],
            "partitioned": any(s.partitions_def is not None for s in c.check_specs),
        }
        for c in defs.asset_checks or []
        if any(s.asset_key in materialized for s in c.check_specs)
    ]
    return {"group": group, "partition": partition, "assets": assets, "observed": observed, "checks": checks}


class JsonFiles(dg.ConfigurableIOManager):
    """Outputs as small JSON files, like lsl_dagster's IO manager and without the debug log events that
    Dagster's default one writes for every load and store (31 of them in this graph, ~0.1 s)."""

    base_dir: str

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        return Path(self.base_dir, context.asset_partition_key, *context.asset_key.path).with_suffix(".json")

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))

    def load_input(self, context: dg.InputContext) -> Any:
        return json.loads(self._path(context).read_text())


def build(graph: dict[str, Any], outputs: Path) -> dg.Definitions:
    partitions = dg.StaticPartitionsDefinition([graph["partition"]])
    common = {"partitions_def": partitions, "group_name": graph["group"]}

    def observed(key: str) -> dg.SourceAsset:
        @dg.observable_source_asset(name=key, **common)
        def _observe() -> dg.DataVersionsByPartition:
            return dg.DataVersionsByPartition({graph["partition"]: "0"})

        return _observe

    def asset(shape: dict[str, Any]) -> dg.AssetsDefinition:
        @dg.asset(
            name=shape["key"],
            ins={name: dg.AssetIn(key) for name, key in shape["inputs"].items()},
            deps=shape["deps"],
            pool=shape["pool"],
            **common,
        )
        def _nothing(**_inputs: Any) -> dict[str, Any]:
            return {}

        return _nothing

    def checks(shape: dict[str, Any]) -> dg.AssetChecksDefinition:
        partitioned = {"partitions_def": partitions} if shape["partitioned"] else {}
        specs = [dg.AssetCheckSpec(name, asset=key, **partitioned) for key, name in shape["specs"]]

        @dg.multi_asset_check(specs=specs, name=shape["name"], can_subset=True)
        def _pass(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
            for key in context.selected_asset_check_keys:
                yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, passed=True)

        return _pass

    return dg.Definitions(
        assets=[*map(observed, graph["observed"]), *map(asset, graph["assets"])],
        asset_checks=list(map(checks, graph["checks"])),
        executor=dg.in_process_executor,
        resources={"io_manager": JsonFiles(base_dir=str(outputs))},
    )


if GRAPH in os.environ:  # loaded as the code location
    gc.freeze()  # as lsl_dagster.definitions does: what the CLI imported is not scanned again
    graph_file = Path(os.environ[GRAPH])
    defs = build(json.loads(graph_file.read_text()), graph_file.parent / "floor_outputs")
    gc.freeze()
