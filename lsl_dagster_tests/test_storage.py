"""Asset outputs on object storage: the IO manager writes and reads them through the S3 API (a local
S3-compatible server, moto's server mode), and the CLI reads results from there."""

import shutil
from pathlib import Path

import pytest

from lsl_dagster.cli import main
from lsl_dagster.graph import STAGES
from lsl_dagster.records import Comparison
from lsl_dagster_tests.conftest import S3_BUCKET as BUCKET
from lsl_dagster_tests.conftest import Lab


def test_outputs_on_s3_round_trip_through_the_io_manager_and_the_cli(
    lab: Lab, s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
):
    monkeypatch.setenv("LSL_OUTPUTS_URL", f"s3://{BUCKET}/runs")
    lab.write("s3-1")
    assert lab.run("s3-1").success  # every stage loads its inputs back from the bucket

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    predictions = {f"runs/s3-1/predictions/{arm}.jsonl" for arm in ("baseline", "lsl", "budget_matched")}
    assert keys == {f"runs/s3-1/{asset}.json" for asset in STAGES} | predictions
    assert not list((lab.runs_dir / "s3-1").glob("*.json"))  # nothing of them on local disk
    evaluation = lab.metadata("s3-1", "stage3_evaluation")
    assert evaluation["predictions"] == f"s3://{BUCKET}/runs/s3-1/predictions/lsl.jsonl"
    stored = s3.get_object(Bucket=BUCKET, Key="runs/s3-1/comparison.json")["Body"].read()
    comparison = Comparison.model_validate_json(stored)
    assert lab.metadata("s3-1", "comparison")["path"] == f"s3://{BUCKET}/runs/s3-1/comparison.json"

    # `lsl results` finds the comparison through the instance and reads it from the bucket; `lsl plot`
    # reads the predictions from there too (the runs directory, a worker's scratch, is gone).
    shutil.rmtree(lab.runs_dir)
    monkeypatch.setenv("DAGSTER_HOME", lab.instance.root_directory)
    monkeypatch.setenv("LSL_DATA_DIR", str(lab.data_dir))
    monkeypatch.setenv("LSL_RUNS_DIR", str(lab.runs_dir))
    assert main(["results", "s3-1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("s3-1 (sim)")]
    assert {row[2]: row[3] for row in rows} == {a.arm: f"{a.score:.3f}" for a in comparison.arms}
    assert len(rows) == 3
    assert main(["plot", "s3-1", "-o", str(tmp_path / "arms.png")]) == 0
    assert (tmp_path / "arms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
