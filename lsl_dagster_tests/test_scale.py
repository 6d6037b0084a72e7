"""Scale is configuration: the same code on a Postgres-backed instance with the multiprocess executor."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from dagster import AssetKey, DagsterInstance
from dagster_postgres import PostgresRunStorage

from lsl_dagster.cli import STAGES
from lsl_dagster_tests.conftest import Lab


def test_an_experiment_on_postgres_with_the_multiprocess_executor(
    lab: Lab, tmp_path: Path, postgres_url: str
):
    home = tmp_path / "postgres_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(
            {
                "storage": {"postgres": {"postgres_url": postgres_url}},
                "telemetry": {"enabled": False},
                "concurrency": {"pools": {"default_limit": 2}},
            }
        )
    )
    lab.write("pg-1")
    env = lab.env(DAGSTER_HOME=str(home), LSL_EXECUTOR="multiprocess")
    materialize = subprocess.run(
        lab.materialize_command("pg-1"), env=env, capture_output=True, text=True, timeout=600
    )
    assert materialize.returncode == 0, materialize.stderr[-3000:]
    assert "multiprocess" in materialize.stderr  # steps ran in their own processes

    # The registry is the Postgres database: every stage's materialization is recorded there.
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        for asset in STAGES:
            assert instance.get_latest_materialization_event(AssetKey(asset)) is not None, asset

    # `lsl results` reads it back: each arm's score as the comparison file has it.
    lsl = str(Path(sys.executable).with_name("lsl"))
    results = subprocess.run([lsl, "results", "pg-1"], env=env, capture_output=True, text=True)
    assert results.returncode == 0, results.stderr
    comparison = json.loads((lab.runs_dir / "pg-1" / "comparison.json").read_text())
    rows = [line.split() for line in results.stdout.splitlines() if line.startswith("pg-1 (sim)")]
    scores = {row[2]: row[3] for row in rows}
    assert scores == {arm["arm"]: f"{arm['score']:.3f}" for arm in comparison["arms"]}
    assert set(scores) == {"baseline", "lsl", "budget_matched"}
