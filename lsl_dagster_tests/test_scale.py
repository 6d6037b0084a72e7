"""Scale is configuration: the same code on a Postgres-backed instance with the multiprocess executor."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

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
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LSL_DATA_DIR": str(lab.data_dir),
        "LSL_RUNS_DIR": str(lab.runs_dir),
        "LSL_EXECUTOR": "multiprocess",
    }
    bin_dir = Path(sys.executable).parent
    materialize = subprocess.run(
        [
            str(bin_dir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "lsl_dagster.definitions",
            "--select",
            "group:lsl",
            "--partition",
            "pg-1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert materialize.returncode == 0, materialize.stderr[-3000:]
    assert "multiprocess" in materialize.stderr  # steps ran in their own processes
    results = subprocess.run(
        [str(bin_dir / "lsl"), "results", "pg-1"], env=env, capture_output=True, text=True
    )
    assert results.returncode == 0, results.stderr
    comparison = (lab.runs_dir / "pg-1" / "comparison.json").read_text()
    for arm in ("baseline", "lsl", "budget_matched"):
        assert "pg-1 (sim)" in results.stdout and arm in results.stdout
    assert '"experiment_id": "pg-1"' in comparison
