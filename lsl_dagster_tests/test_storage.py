"""Asset outputs on object storage: the IO manager writes and reads them through the S3 API (a local
S3-compatible server, moto's server mode), and the CLI reads results from there."""

from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from lsl_dagster.cli import STAGES, main
from lsl_dagster.models import Comparison
from lsl_dagster_tests.conftest import Lab

BUCKET = "lsl-test"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """An S3-compatible server on 127.0.0.1 with an empty bucket; the standard AWS variables point at it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


def test_outputs_on_s3_round_trip_through_the_io_manager_and_the_cli(
    lab: Lab, s3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setenv("LSL_OUTPUTS_URL", f"s3://{BUCKET}/runs")
    lab.write("s3-1")
    assert lab.run("s3-1").success  # every stage loads its inputs back from the bucket

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {f"runs/s3-1/{asset}.json" for asset in STAGES}
    assert not list((lab.runs_dir / "s3-1").glob("*.json"))  # nothing of them on local disk
    stored = s3.get_object(Bucket=BUCKET, Key="runs/s3-1/comparison.json")["Body"].read()
    comparison = Comparison.model_validate_json(stored)
    assert lab.metadata("s3-1", "comparison")["path"] == f"s3://{BUCKET}/runs/s3-1/comparison.json"

    # `lsl results` finds the comparison through the instance and reads it from the bucket.
    monkeypatch.setenv("DAGSTER_HOME", lab.instance.root_directory)
    monkeypatch.setenv("LSL_DATA_DIR", str(lab.data_dir))
    monkeypatch.setenv("LSL_RUNS_DIR", str(lab.runs_dir))
    assert main(["results", "s3-1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("s3-1 (sim)")]
    assert {row[2]: row[3] for row in rows} == {a.arm: f"{a.score:.3f}" for a in comparison.arms}
    assert len(rows) == 3
