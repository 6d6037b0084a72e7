"""Crash safety: kill -9 a real materialization mid-stage, resume, and check nothing is lost or paid twice."""

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterRunStatus, RunsFilter

from lsl_dagster.cli import main
from lsl_dagster.llm.cache import ResponseStore, cache_path
from lsl_dagster.llm.ledger import CallLog
from lsl_dagster.sim.server import SimServer
from lsl_dagster_tests.conftest import STAGE_ASSETS, Lab, make_lab, shipped_keys

PORT_SERVER_SEED = 0


def _spec(port: int) -> dict:
    base = f"http://127.0.0.1:{port}/v1"
    return {
        "large_model": {"model": "openai/sim-large", "api_base": base, "max_concurrency": 4},
        "small_model": {"model": "openai/sim-small", "api_base": base, "max_concurrency": 4},
    }


def _materialized(lab: Lab, experiment_id: str) -> set[str]:
    done = set()
    for asset in STAGE_ASSETS:
        records = lab.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[experiment_id]), limit=10
        ).records
        if records:
            done.add(asset)
    return done


def _outputs(lab: Lab, experiment_id: str) -> dict:
    """What an experiment concluded: prompts, per-example predictions and the comparison's numbers."""
    prompts = {a: lab.output(experiment_id, a)["predictors"] for a in STAGE_ASSETS if a.endswith("prompt")}
    comparison = lab.output(experiment_id, "comparison")
    evaluations = [a for a in STAGE_ASSETS if a.endswith("evaluation")]
    predictions = {a: lab.read(lab.output(experiment_id, a)["predictions_path"]) for a in evaluations}
    return {
        "prompts": prompts,
        # Where each arm's predictions are differs between experiments; what they hold is compared below.
        "arms": [{k: v for k, v in arm.items() if k != "predictions_path"} for arm in comparison["arms"]],
        "differences": comparison["differences"],
        "predictions": predictions,
    }


def _assert_nothing_corrupt(directory: Path) -> None:
    for path in directory.rglob("*"):
        if not path.is_file() or "cache" in path.parts or path.name.endswith(".tmp"):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            text = path.read_text()
            complete = text if text.endswith("\n") or not text else text[: text.rfind("\n") + 1]
            for line in complete.splitlines():
                json.loads(line)  # only the call log may end in a torn line, which readers skip


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """One LLM step at a time: a killed run must not keep holding the pool's only slot."""
    with make_lab(tmp_path, {"concurrency": {"pools": {"default_limit": 1}}}) as lab:
        yield lab


@pytest.fixture
def reference(lab: Lab) -> tuple[dict, dict[str, int]]:
    """An uninterrupted run: its outputs and how often the server answered each distinct request."""
    with SimServer(seed=PORT_SERVER_SEED, latency_s=0.005, answer_keys=shipped_keys()).start() as server:
        lab.write("ref", **_spec(server.port))
        assert lab.run("ref").success
        return _outputs(lab, "ref"), dict(server.served_requests)


def _kill_and_resume(
    lab: Lab,
    name: str,
    stage: str,
    after: int,
    *,
    freeze: bool,
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict | None = None,
) -> tuple[dict[str, int], set[str]]:
    """kill -9 a materialization once `stage` has `after` calls, resume it by materializing what is
    missing; return how often the provider answered each request (both runs) and what was done before."""
    first = SimServer(seed=PORT_SERVER_SEED, latency_s=0.01, answer_keys=shipped_keys()).start()
    lab.write(name, **_spec(first.port), **(overrides or {}))
    process = subprocess.Popen(
        lab.materialize_command(name), env=lab.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while len(lab.calls(name, stage)) < after:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the stage never got going"
            time.sleep(0.01)
        if freeze:
            # Freeze the provider, wait until the client has stored every response it was sent, then
            # kill: what is in flight then is never answered, so never paid.
            first.freeze()
            with ResponseStore(cache_path(lab.runs_dir / name)) as store:
                while len(store) < first.served:  # each answer the server sent has a key of its own
                    assert time.monotonic() < deadline, "the client never stored what it was sent"
                    time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        first.stop()
    # The killed run holds its pool slot (the lab's pool has one): end it as the UI's force termination
    # does, which frees the slot; otherwise the resumed run waits for it forever.
    (killed,) = lab.instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    monkeypatch.setenv("DAGSTER_HOME", lab.instance.root_directory)
    assert main(["cancel", killed.dagster_run.run_id]) == 0
    assert lab.instance.get_run_by_id(killed.dagster_run.run_id).status == DagsterRunStatus.CANCELED
    done_before = _materialized(lab, name)
    _assert_nothing_corrupt(lab.runs_dir / name)
    mtimes = {a: (lab.runs_dir / name / f"{a}.json").stat().st_mtime_ns for a in done_before}

    # Resume the way a user would: materialize what is missing.
    missing = [a for a in STAGE_ASSETS if a not in done_before]
    with SimServer(seed=PORT_SERVER_SEED, port=first.port, answer_keys=shipped_keys()).start() as second:
        assert lab.run(name, ["experiment_file", *missing]).success
    for asset in done_before:  # finished assets were not recomputed
        assert lab.materializations(name, asset) == 1
        assert (lab.runs_dir / name / f"{asset}.json").stat().st_mtime_ns == mtimes[asset]
    paid = Counter(first.served_requests) + Counter(second.served_requests)
    return dict(paid), done_before


@pytest.mark.parametrize(("stage", "after"), [("stage1", 30), ("stage2", 20), ("baseline_evaluation", 15)])
def test_kill_9_mid_stage_then_resume(
    lab: Lab,
    reference,
    stage: str,
    after: int,
    monkeypatch: pytest.MonkeyPatch,
):
    expected, paid_once = reference
    name = f"kill-{stage.replace('_', '-')}"
    paid, _ = _kill_and_resume(lab, name, stage, after, freeze=True, monkeypatch=monkeypatch)
    # Together, the killed and the resumed run paid for exactly the requests the uninterrupted run did.
    assert paid == paid_once
    assert _outputs(lab, name) == expected


@pytest.mark.parametrize(("stage", "after"), [("stage2", 20), ("baseline_evaluation", 15)])
def test_a_real_kill_9_repays_at_most_the_requests_in_flight(
    lab: Lab,
    reference,
    stage: str,
    after: int,
    monkeypatch: pytest.MonkeyPatch,
):
    """No freeze: the provider keeps answering up to the kill. A response sent in the instant before the
    crash that never reached the cache is paid again, and nothing else: at most max_concurrency (4)."""
    expected, paid_once = reference
    name = f"crash-{stage.replace('_', '-')}"
    paid, done_before = _kill_and_resume(lab, name, stage, after, freeze=False, monkeypatch=monkeypatch)
    assert "comparison" not in done_before  # the kill landed mid-experiment
    repaid = Counter(paid) - Counter(paid_once)
    missed = Counter(paid_once) - Counter(paid)
    assert not missed  # every request the uninterrupted run made was answered
    assert repaid.total() <= 4, repaid
    # The experiment's call log counts what the provider answered, less what it answered and the killed
    # client never received (in flight at the kill).
    logged = [r for r in CallLog.read(lab.runs_dir / name / "calls.jsonl") if r.get("ok")]
    assert 0 <= sum(paid.values()) - len(logged) <= 4
    # Same prompts, predictions and scores. An arm's calls and cost are what was paid, so they include
    # the requests paid twice, and nothing is missing: every response the resumed run replayed from the
    # cache had its cost logged before it could be cached.
    got = _outputs(lab, name)
    for crashed, uninterrupted in zip(got["arms"], expected["arms"], strict=True):
        assert uninterrupted["calls"] <= crashed["calls"] <= uninterrupted["calls"] + repaid.total()
        assert uninterrupted["cost_usd"] <= crashed["cost_usd"]
    usage = ("calls", "cost_usd")
    assert [{k: v for k, v in arm.items() if k not in usage} for arm in got["arms"]] == [
        {k: v for k, v in arm.items() if k not in usage} for arm in expected["arms"]
    ]
    assert {k: v for k, v in got.items() if k != "arms"} == {k: v for k, v in expected.items() if k != "arms"}


# Rounds of 20, then 10, examples per arm; the budget-matched prompt equals the baseline's, so with margin 0
# the rounds run to the limit.
SEQUENTIAL = {"evaluation": {"limit": 100, "sequential": {"min_examples": 20}}}


def test_kill_9_during_sequential_rounds_resumes_to_the_same_stop_without_repaying(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
):
    with SimServer(seed=PORT_SERVER_SEED, latency_s=0.005, answer_keys=shipped_keys()).start() as server:
        lab.write("ref-seq", **_spec(server.port), **SEQUENTIAL)
        assert lab.run("ref-seq").success
        expected, paid_once = _outputs(lab, "ref-seq"), dict(server.served_requests)
        # The baseline and budget-matched prompts are the same here, so their rounds send the same requests
        # at the same time: the provider still answers each greedy request once (the only repeats are the
        # optimizers' resamples at temperature 1, as in the fixed design).
        assert all(float(t) > 0 for t in server.repeats_by_temperature), server.repeats_by_temperature
    rounds = lab.calls("ref-seq", "evaluation_rounds")
    assert 0 < len(rounds) < 3 * 100
    paid, done_before = _kill_and_resume(
        lab,
        "kill-rounds",
        "evaluation_rounds",
        15,
        freeze=True,
        monkeypatch=monkeypatch,
        overrides=SEQUENTIAL,
    )
    assert not any(a.endswith("evaluation") for a in done_before)
    assert paid == paid_once
    assert _outputs(lab, "kill-rounds") == expected
    decisions = [lab.output(n, "comparison")["sequential"] for n in ("ref-seq", "kill-rounds")]
    assert [{k: v for k, v in d.items() if k not in ("key", "ledger")} for d in decisions] == [
        {k: v for k, v in decisions[0].items() if k not in ("key", "ledger")}
    ] * 2
    assert decisions[0]["examples"] == 100 and decisions[0]["reason"] == "examples"
