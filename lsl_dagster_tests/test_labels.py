"""A result made by the simulator is labelled SIMULATED whatever its model is called and however it is
served: the sim server identifies itself in each reply and the client records it per model."""

import json
from pathlib import Path

import httpx
import pytest
from dspy.lm15 import Message, Request, Response, TextPart, Usage

from lsl_dagster.cli import main
from lsl_dagster.llm.engine import SIMULATED_FINGERPRINT, MeteredEngine
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.sim.http import SIMULATED_HEADER
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment import SIMULATED as LABEL
from lsl_dagster.spec.experiment import ModelSpec
from lsl_dagster_tests.conftest import STAGE_ASSETS, Lab


def test_the_sim_server_identifies_itself(sim_server: SimServer):
    body = {"model": "sim-small", "messages": [{"role": "user", "content": "2 + 2?"}]}
    reply = httpx.post(f"{sim_server.url}/chat/completions", json=body, timeout=10)
    assert reply.status_code == 200
    assert reply.headers[SIMULATED_HEADER] == "1"
    assert reply.json()["system_fingerprint"] == SIMULATED_FINGERPRINT


class _Replies:
    """An engine that answers every request with a fixed provider body."""

    def __init__(self, provider_data: dict | None):
        self.provider_data = provider_data

    def complete(self, request: Request) -> Response:
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart("4")]),
            finish_reason="stop",
            usage=Usage(input_tokens=3, output_tokens=1),
            provider_data=self.provider_data,
        )


@pytest.mark.parametrize(
    ("provider_data", "simulated"),
    [
        ({"system_fingerprint": SIMULATED_FINGERPRINT}, True),
        ({"system_fingerprint": "fp_44709d6fcb"}, False),
        (None, False),
    ],
)
def test_the_client_records_simulated_replies_per_model(provider_data, simulated):
    spec = ModelSpec(model="openai/some-model", api_base="http://127.0.0.1:1/v1")
    meter = Meter("stage1", max_calls=None, cost_allowance_usd=None)
    engine = MeteredEngine(_Replies(provider_data), spec, meter, None)
    engine.complete(Request(model=spec.model, messages=(Message.user("2 + 2?"),)))
    ledger = meter.ledger()
    assert ledger.by_model["openai/some-model"].simulated is simulated
    assert ledger.simulated is simulated


def _run_cli(capsys: pytest.CaptureFixture, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_runs_on_the_sim_server_are_labelled_simulated_everywhere(
    lab: Lab,
    sim_server: SimServer,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
):
    http = {"api_base": sim_server.url}
    lab.write(
        "over-http",
        large_model={"model": "openai/sim-large", **http},
        small_model={"model": "openai/sim-small", **http},
    )
    assert lab.run("over-http").success
    assert sim_server.stats()["served"] > 0

    # The stored assets and the UI metadata of every stage.
    for asset in STAGE_ASSETS:
        assert lab.output("over-http", asset)["simulated"] is True, asset
        assert lab.metadata("over-http", asset)["simulated"] == LABEL, asset
    assert LABEL in lab.metadata("over-http", "comparison")["verdicts"]
    assert lab.output("over-http", "stage1_prompt")["ledger"]["by_model"]["openai/sim-large"]["simulated"]

    # The CLI and the exports.
    for name, value in lab.env().items():
        if name in ("DAGSTER_HOME", "LSL_DATA_DIR", "LSL_RUNS_DIR"):
            monkeypatch.setenv(name, value)
    out = _run_cli(capsys, "results", "over-http")
    assert "over-http (sim)" in out and LABEL in out
    _run_cli(capsys, "export", "over-http", "--format", "json", "-o", str(tmp_path / "rows.json"))
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 3 and all(row["simulated"] is True for row in rows)
