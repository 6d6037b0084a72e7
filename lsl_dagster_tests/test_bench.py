"""The benchmarks' fixtures. bench/floor.py is what overhead.py measures Dagster's own cost with: it must
be the experiment's graph (assets, inputs, pool, checks) with no work in it, or its floor would be
another graph's."""

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from dagster import AssetKey, Definitions

from lsl_dagster.defs.assets import GROUP
from lsl_dagster.defs.checks import CHECKS
from lsl_dagster_tests.conftest import PROJECT, STAGE_ASSETS, Lab

BENCH = PROJECT / "bench"


def load_floor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("floor", BENCH / "floor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shape(defs: Definitions) -> dict[str, Any]:
    """Each asset of the group with the assets it reads, its other dependencies and pool; its checks."""
    specs = [s for s in defs.resolve_all_asset_specs() if s.group_name == GROUP]
    assets = {}
    for spec in specs:
        node = defs.resolve_assets_def(spec.key)
        assets[spec.key.to_user_string()] = (
            sorted(k.to_user_string() for k in node.keys_by_input_name.values()),
            sorted(d.asset_key.to_user_string() for d in spec.deps),
            node.op.pool if node.is_materializable else None,
            node.is_materializable,
        )
    checks = {
        (s.asset_key.to_user_string(), s.name, s.partitions_def is not None)
        for c in defs.asset_checks or []
        for s in c.check_specs
    }
    return {"assets": assets, "checks": checks}


def test_the_floor_is_the_experiment_graph_with_no_work(lab: Lab, tmp_path: Path) -> None:
    lab.write("floor-01")
    defs = lab.defs()
    floor = load_floor()
    built = floor.build(floor.graph_of(defs, GROUP, "floor-01"), tmp_path / "floor_outputs")

    ours, its = shape(defs), shape(built)
    assert its == ours
    stages = {key for key, (*_, materializable) in ours["assets"].items() if materializable}
    assert stages == set(STAGE_ASSETS)  # not two empty graphs
    partitioned = {(asset, check.__name__, True) for asset, (_, checks) in CHECKS.items() for check in checks}
    assert ours["checks"] == partitioned

    result = built.resolve_implicit_global_asset_job_def().execute_in_process(
        partition_key="floor-01", instance=lab.instance, asset_selection=[AssetKey(k) for k in stages]
    )
    assert result.success
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == stages
    assert {(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations()} == {
        (a, name)
        for a, name, _ in ours["checks"]
        if a in stages  # the optional arms' checks: not run
    }
