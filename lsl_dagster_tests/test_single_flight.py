"""Single flight: a request already in flight in the experiment is not sent again; whoever else asks it
waits for that answer. Counted at a sim server that answers slowly."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lsl_dagster.llm.cache import ResponseStore, experiment_cache
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment import ModelSpec
from lsl_dagster_tests.conftest import Lab, shipped_keys

THREADS = 8
QUESTION = [{"role": "user", "content": "What is 17 + 25? Answer with the number only."}]


@pytest.fixture
def slow_server():
    # Slow enough that every thread asks while the first request is still unanswered.
    with SimServer(latency_s=0.5).start() as server:
        yield server


def _ask_together(tmp_path: Path, server: SimServer, asks: list[dict]) -> tuple[list[str], Meter]:
    """Each of `asks` (extra arguments of one call) from its own thread, all released at once, through a
    stage's metered, cached LM; the answers and the stage's meter."""
    spec = ModelSpec(model="openai/sim-large", api_base=server.url, max_concurrency=THREADS)
    meter = Meter("stage1", max_calls=100, cost_allowance_usd=None)
    start = threading.Barrier(len(asks))
    with ResponseStore(tmp_path / "responses.sqlite") as store, experiment_cache(store, meter):
        lm = LanguageModels(num_retries=0).lm(spec, meter, seed=0)

        def ask(extra: dict) -> str:
            start.wait()
            return lm(messages=QUESTION, **extra)[0]

        with ThreadPoolExecutor(len(asks)) as pool:
            answers = list(pool.map(ask, asks))
        lm.engine.close()
    assert meter.wait_idle()
    return answers, meter


def test_identical_requests_in_flight_together_are_sent_once(tmp_path: Path, slow_server: SimServer):
    answers, meter = _ask_together(tmp_path, slow_server, [{}] * THREADS)

    assert slow_server.stats()["requests"] == 1
    assert len(set(answers)) == 1 and answers[0]
    usage = meter.ledger().by_model["openai/sim-large"]
    # One paid call; the others waited for its answer and got it from the cache, free.
    assert (usage.calls, usage.cache_hits, usage.replayed) == (1, THREADS - 1, 0)
    assert meter.ledger().budget_used == 1


def test_resamples_in_flight_together_stay_requests_of_their_own(tmp_path: Path, slow_server: SimServer):
    # DSPy's resamples: the same messages at temperature 1 with a new rollout id each.
    asks = [{"temperature": 1.0, "rollout_id": i} for i in range(3)] * 2
    _, meter = _ask_together(tmp_path, slow_server, asks)

    assert slow_server.stats()["requests"] == 3
    usage = meter.ledger().by_model["openai/sim-large"]
    assert (usage.calls, usage.cache_hits) == (3, 3)


def test_an_uninterrupted_experiment_sends_no_greedy_request_twice(lab: Lab):
    # Slow replies and many threads per model: the stages' threads often ask the same thing at once.
    with SimServer(latency_s=0.02, answer_keys=shipped_keys()).start() as server:
        http = {"api_base": server.url, "max_concurrency": 16}
        lab.write(
            "greedy",
            large_model={"model": "openai/sim-large", **http},
            small_model={"model": "openai/sim-small", **http},
            stage2={"optimizer": "gepa", "max_calls": 80},
        )
        assert lab.run("greedy").success
        repeats = dict(server.repeats_by_temperature)
        served, distinct = server.served, len(server.served_requests)

    assert distinct > 100  # the experiment did real work
    # What reached the server twice is only DSPy's deliberate resamples (temperature > 0, a new rollout
    # id); every greedy request was answered once.
    assert served - distinct == sum(repeats.values())
    assert not {t: n for t, n in repeats.items() if float(t) == 0}, repeats
