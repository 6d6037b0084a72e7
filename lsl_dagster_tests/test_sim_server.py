"""The sim models over HTTP (a simulated test double): replies, usage, auth, latency, concurrency, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from lsl_dagster.sim.answer_key import AnswerKey
from lsl_dagster.sim.engine import respond
from lsl_dagster.sim.faults import FAULT_KINDS, FaultPlan
from lsl_dagster.sim.http import MODEL_IDS
from lsl_dagster.sim.server import SimServer, main
from lsl_dagster.sim.tiers import TIERS

SYSTEM = (
    "Your input fields are:\n1. `question` (str)\nYour output fields are:\n1. `answer` (str)\n"
    "All interactions will be structured in the following way."
)
QUESTION = "[[ ## question ## ]]\nSam has 5 apples. He buys 3 more. How many apples does Sam have?"
SECRET = "sk-sim-test-4f9d2c1e8b7a"
# The gold label the sim may read for QUESTION: with it the sim plays the example, seed by seed.
KEY = AnswerKey([({"question": QUESTION.split("\n", 1)[1]}, {"answer": "8"})])


def chat(model: str = "sim-large", question: str = QUESTION, **extra: object) -> dict:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": model, "messages": messages, "temperature": 0.0, "max_tokens": 256, **extra}


def post(client: httpx.Client, server: SimServer, body: object = None, **kwargs: object) -> httpx.Response:
    return client.post(f"{server.url}/chat/completions", json=chat() if body is None else body, **kwargs)


@pytest.fixture
def client():
    with httpx.Client(timeout=5.0) as c:
        yield c


def wait_idle(server: SimServer) -> None:
    """in_flight drops just after the reply is written, so give the handler thread a moment."""
    deadline = time.monotonic() + 2
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def test_completion_matches_respond_and_prices_usage(client):
    with SimServer(seed=3, answer_keys=[KEY]).start() as server:
        body = chat("sim-medium")
        # Content parts and the default seed: the server must pass the same inputs to `respond`.
        parts = (QUESTION[:20], QUESTION[20:])
        body["messages"][1]["content"] = [{"type": "text", "text": part} for part in parts]
        r = post(client, server, body)
        assert r.status_code == 200
        data = r.json()
        expected = respond("sim-medium", SYSTEM, [("user", QUESTION)], seed=3, keys=[KEY], max_tokens=256)
        assert data["object"] == "chat.completion"
        assert data["model"] == "sim-medium"
        assert data["created"] == 0
        choice = data["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": expected.text}
        assert choice["finish_reason"] == "stop"
        usage = data["usage"]
        assert usage["prompt_tokens"] == expected.input_tokens
        assert usage["completion_tokens"] == expected.output_tokens
        assert usage["total_tokens"] == expected.input_tokens + expected.output_tokens
        cost = TIERS["medium"].price.cost(expected.input_tokens, expected.output_tokens)
        assert cost > 0
        assert usage["cost"] == pytest.approx(cost)

        # An explicit seed in the request overrides the server's default; every model spelling works.
        # A seed whose reply differs, so the check below can tell the seeds apart.
        other, reseeded = next(
            (seed, reply)
            for seed in range(4, 100)
            if (
                reply := respond("medium", SYSTEM, [("user", QUESTION)], seed, keys=[KEY], max_tokens=256)
            ).text
            != expected.text
        )
        for model in ("sim/medium", "medium", "sim-medium"):
            r = post(client, server, chat(model, seed=other))
            assert r.json()["choices"][0]["message"]["content"] == reseeded.text

        stats = server.stats()
        assert stats["requests"] == stats["served"] == 4
        assert stats["faults"] == {} and stats["rejected"] == 0
        assert stats["prompt_tokens"] == 4 * expected.input_tokens
        assert stats["completion_tokens"] == expected.output_tokens + 3 * reseeded.output_tokens
        assert stats["cost_usd"] == pytest.approx(
            cost + 3 * TIERS["medium"].price.cost(reseeded.input_tokens, reseeded.output_tokens)
        )


def test_same_request_gives_same_reply_across_calls_and_servers(client):
    replies = []
    for _ in range(2):
        with SimServer(seed=5).start() as server:
            for _ in range(2):
                data = post(client, server).json()
                replies.append((data["choices"][0]["message"]["content"], data["usage"]))
    assert all(reply == replies[0] for reply in replies)


def test_usage_cost_can_be_left_out(client):
    with SimServer(report_cost=False).start() as server:
        usage = post(client, server).json()["usage"]
    assert "cost" not in usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_models_stats_and_reset(client):
    with SimServer().start() as server:
        models = client.get(f"{server.url}/models").json()
        assert (
            [m["id"] for m in models["data"]]
            == list(MODEL_IDS)
            == ["sim-large", "sim-medium", "sim-small", "sim-tiny"]
        )
        post(client, server)
        base = server.url.removesuffix("/v1")
        stats = client.get(f"{base}/stats").json()
        assert stats == server.stats()
        assert stats["requests"] == 1 and stats["served"] == 1
        assert server.requests == 1 and server.served == 1 and server.prompt_tokens > 0
        assert client.post(f"{base}/reset").status_code == 200
        assert server.stats() == {
            "requests": 0,
            "served": 0,
            "rejected": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
            "in_flight": 0,
            "max_in_flight": 0,
            "held": 0,
            "truncated": 0,
            "faults": {},
        }


def test_unknown_model_and_bad_requests_are_rejected(client):
    with SimServer().start() as server:
        r = post(client, server, chat("sim-huge"))
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "model_not_found"
        assert r.json()["error"]["type"] == "invalid_request_error"
        r = client.post(
            f"{server.url}/chat/completions",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400 and "error" in r.json()
        assert post(client, server, {"model": "sim-large"}).status_code == 400
        assert post(client, server, chat(stream=True)).status_code == 400
        # The connection survives the errors (keep-alive) and still serves.
        assert post(client, server).status_code == 200
        assert server.stats()["requests"] == 5
        assert server.served == 1 and server.rejected == 4


def test_remote_host_needs_explicit_opt_in():
    with pytest.raises(ValueError, match="non-loopback"):
        SimServer(host="0.0.0.0")
    with pytest.raises(ValueError, match="non-loopback"):
        SimServer(host="example.com")
    with pytest.raises(ValueError, match="unknown fault kinds"):
        SimServer(faults={1: "teapot"})


# --- Faults ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["500", "502", "503"])
def test_server_errors(client, status):
    with SimServer(faults={1: status}).start() as server:
        r = post(client, server)
        assert r.status_code == int(status)
        assert r.json()["error"]["type"] == "server_error"
        assert post(client, server).status_code == 200
        assert server.stats()["faults"] == {status: 1}
        assert server.requests == 2 and server.served == 1


def test_rate_limit_carries_retry_after(client):
    with SimServer(faults={1: "429"}, retry_after_s=0.2).start() as server:
        r = post(client, server)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "0.2"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert post(client, server).status_code == 200
        assert server.faults == {"429": 1} and server.served == 1 and server.requests == 2


def test_malformed_body_fails_json_parsing(client):
    with SimServer(faults={1: "malformed"}).start() as server:
        r = post(client, server)
        assert r.status_code == 200
        assert int(r.headers["Content-Length"]) == len(r.content) > 0
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content)
        assert post(client, server).json()["choices"][0]["message"]["content"]
        assert server.faults == {"malformed": 1} and server.served == 1 and server.requests == 2


def test_reset_drops_the_connection(client):
    with SimServer(faults={1: "reset"}).start() as server:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
            post(client, server)
        assert post(client, server).status_code == 200
        assert server.faults == {"reset": 1} and server.served == 1 and server.requests == 2


def test_hang_times_the_client_out_and_does_not_block_shutdown():
    server = SimServer(faults={1: "hang"}, hang_s=30).start()
    try:
        # Timeouts far from the 30 s hang, so that a loaded machine's slow answers are not mistaken for it.
        with httpx.Client(timeout=2.0) as client:
            start = time.monotonic()
            with pytest.raises(httpx.TimeoutException):
                post(client, server)
            assert time.monotonic() - start < 15
            assert post(client, server).status_code == 200
        assert server.faults == {"hang": 1} and server.served == 1 and server.requests == 2
        assert server.in_flight == 1  # the hung handler is still asleep
    finally:
        start = time.monotonic()
        server.stop()
    assert time.monotonic() - start < 2
    wait_idle(server)  # stopping wakes the hung handler, which then drops its connection unanswered
    assert server.in_flight == 0 and server.served == 1


def test_scheduled_faults_hit_exactly_their_request_numbers(client):
    with SimServer(faults={2: "500", 5: "429", 6: "503"}, retry_after_s=0).start() as server:
        statuses = [post(client, server).status_code for _ in range(7)]
        assert statuses == [200, 500, 200, 200, 429, 503, 200]
        assert server.faults == {"500": 1, "429": 1, "503": 1}
        assert server.requests == 7 and server.served == 4
        # Resetting the counters restarts the numbering.
        server.reset()
        assert [post(client, server).status_code for _ in range(2)] == [200, 500]


def test_fault_rate_is_deterministic_in_seed_and_request_number(client):
    def draws(seed: int) -> list[str | None]:
        plan = FaultPlan(rate=0.4, kinds=("500", "503", "429"), seed=seed)
        return [plan.fault_for(n) for n in range(1, 41)]

    expected = draws(9)
    assert 5 <= sum(kind is not None for kind in expected) <= 30
    assert {kind for kind in expected if kind} == {"500", "503", "429"}
    assert draws(9) == expected != draws(10)
    assert all(FaultPlan(rate=1.0, kinds=("502",)).fault_for(n) == "502" for n in range(1, 20))
    assert all(FaultPlan().fault_for(n) is None for n in range(1, 20))

    options = {"fault_rate": 0.4, "fault_kinds": ["500", "503", "429"], "fault_seed": 9}
    with SimServer(**options).start() as server:
        statuses = [post(client, server).status_code for _ in range(40)]
        assert statuses == [200 if kind is None else int(kind) for kind in expected]
        assert server.served == expected.count(None)
        assert sum(server.faults.values()) == 40 - expected.count(None)


def test_every_fault_kind_is_covered():
    assert set(FAULT_KINDS) == {
        *("429", "500", "502", "503", "hang", "malformed", "reset"),
        *("empty_choices", "null_content"),
    }


# --- Auth, latency, concurrency -------------------------------------------------------------------------
def test_api_key_is_required_and_never_echoed(client, capfd):
    with SimServer(api_key=SECRET).start() as server:
        bodies = []
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}):
            r = post(client, server, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
            bodies.append(r)
        assert client.get(f"{server.url}/models").status_code == 401
        good = {"Authorization": f"Bearer {SECRET}"}
        r = post(client, server, headers=good)
        assert r.status_code == 200
        bodies.append(r)
        bodies.append(client.get(f"{server.url}/models", headers=good))
        assert bodies[-1].status_code == 200
        assert server.requests == 4 and server.served == 1 and server.rejected == 3
        text = repr(server)
    for r in bodies:
        assert SECRET not in r.text
        assert SECRET not in str(r.headers)
    assert SECRET not in text
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_latency_is_honoured(client):
    with SimServer(latency_s=0.3).start() as server:
        start = time.monotonic()
        assert post(client, server).status_code == 200
        assert time.monotonic() - start >= 0.3


def test_concurrent_requests_are_served_in_parallel():
    with SimServer(latency_s=0.2).start() as server, httpx.Client(timeout=5.0) as client:
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: post(client, server).status_code, range(8)))
        elapsed = time.monotonic() - start
        wait_idle(server)
        assert statuses == [200] * 8
        assert server.max_in_flight >= 4
        assert server.in_flight == 0 and server.served == 8
        assert elapsed < 8 * 0.2


def test_cli_serves_with_key_from_env_and_never_prints_it():
    env = {**os.environ, "SIM_TEST_KEY": SECRET, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lsl_dagster.sim.server",
            "--port",
            "0",
            "--api-key-env",
            "SIM_TEST_KEY",
            "--seed",
            "4",
            "--fault-rate",
            "1",
            "--fault-kinds",
            "503",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "SIMULATED" in line
        url = line.split()[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        with httpx.Client(timeout=5.0) as client:
            assert client.post(f"{url}/chat/completions", json=chat()).status_code == 401
            good = {"Authorization": f"Bearer {SECRET}"}
            r = client.post(f"{url}/chat/completions", json=chat(), headers=good)
            assert r.status_code == 503
    finally:
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert SECRET not in line + out + err


def test_cli_refuses_an_unset_key_variable(capsys, monkeypatch):
    monkeypatch.delenv("SIM_TEST_UNSET", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["--port", "0", "--api-key-env", "SIM_TEST_UNSET"])
    assert exc.value.code == 2
    assert "SIM_TEST_UNSET" in capsys.readouterr().err


def test_stop_is_idempotent_and_threads_finish():
    before = threading.active_count()
    server = SimServer().start()
    server.stop()
    server.stop()
    assert threading.active_count() <= before + 1


def test_repeated_requests_are_counted_and_held_ones_are_never_served(client):
    with SimServer().start() as server:
        post(client, server)
        post(client, server)
        assert list(server.served_requests.values()) == [2]

        server.hold()
        errors: list[BaseException] = []

        def late() -> None:
            try:
                post(client, server, chat(question="held"))
            except httpx.HTTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=late)
        thread.start()
        deadline = time.monotonic() + 30
        while server.stats()["held"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats()["held"] == server.stats()["in_flight"] == 1
        server.stop()
        thread.join(5)
        assert errors and server.served == 2
