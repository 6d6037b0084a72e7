"""Call logs, response caches and stage locks in PostgreSQL (LSL_CACHE_URL): what a worker on another host,
sharing no disk, needs to replay what was paid for and to keep the budgets."""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psycopg2
import pytest
from dagster import instance_for_test

from lsl_dagster.llm.pg_state import PostgresState
from lsl_dagster.llm.state import LocalState
from lsl_dagster.sim.server import SimServer
from lsl_dagster_tests.conftest import Lab
from lsl_dagster_tests.test_resume import _outputs


def test_a_run_on_another_host_replays_the_experiment_from_the_database(
    lab: Lab, tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("LSL_CACHE_URL", postgres_url)
    with SimServer().start() as server:
        http = {"api_base": server.url}
        lab.write(
            "pg-cache",
            large_model={"model": "openai/sim-large", **http},
            small_model={"model": "openai/sim-small", **http},
        )
        assert lab.run("pg-cache").success
        paid = sum(server.served_requests.values())
        # Nothing of the experiment's state is on local disk: no call log, no response cache.
        run_dir = lab.runs_dir / "pg-cache"
        assert not (run_dir / "calls.jsonl").exists() and not (run_dir / "cache").exists()
        calls = [r for r in PostgresState(postgres_url).calls("pg-cache") if "event" not in r]
        assert len(calls) == paid > 0

        # Another host: its own empty runs directory and a fresh instance (every asset is computed
        # again), the same database. Every request replays; none reaches the provider.
        (tmp_path / "other_home").mkdir()
        with instance_for_test(temp_dir=str(tmp_path / "other_home")) as other_instance:
            other = Lab(lab.data_dir, tmp_path / "other_runs", other_instance)
            assert other.run("pg-cache").success
        assert sum(server.served_requests.values()) == paid
    # The same conclusions; only what each run paid differs (the second paid nothing).
    assert _concluded(_outputs(other, "pg-cache")) == _concluded(_outputs(lab, "pg-cache"))
    assert {arm["calls"] for arm in other.output("pg-cache", "comparison")["arms"]} == {0}


def _concluded(outputs: dict) -> dict:
    return {
        **outputs,
        "arms": [{k: v for k, v in a.items() if k not in ("calls", "cost_usd")} for a in outputs["arms"]],
    }


HOLD = """
import sys, time
from lsl_dagster.llm.pg_state import PostgresState
with PostgresState(sys.argv[1]).campaign_allowance("camp", 1.0, ["e1"], "e1--stage1", 0.4) as usd:
    print(usd, flush=True)
    time.sleep(600)
"""


def test_a_campaign_cap_holds_across_hosts_and_a_dead_holder_frees_its_share(postgres_url: str):
    """Stages of a campaign on different hosts share its max_cost_usd through the database; the share of a
    worker killed -9 is free again once its connection is gone."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, postgres_url], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert holder.stdout is not None
        assert float(holder.stdout.readline()) == pytest.approx(0.4)
        state = PostgresState(postgres_url)
        with state.campaign_allowance("camp", 1.0, ["e1"], "e1--stage2", None) as left:
            assert left == pytest.approx(0.6)  # the cap less what the other host holds
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(30)
        deadline = time.monotonic() + 30
        while True:  # the server notices the dropped connection at once; allow it a moment
            with state.campaign_allowance("camp", 1.0, ["e1"], "e1--stage2", None) as left:
                if left == pytest.approx(1.0) or time.monotonic() > deadline:
                    break
            time.sleep(0.1)
        assert left == pytest.approx(1.0)
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)


def test_a_write_held_up_in_the_database_does_not_hold_up_other_threads(postgres_url: str):
    """A stage's threads each have their own connection: one thread's statement waiting in the database
    (here its key is held by another transaction) does not stop the others' lookups and log lines."""
    state = PostgresState(postgres_url)
    store, log = state.responses("e1"), state.call_log("e1")
    assert store.get("warm-up") is None  # the tables exist
    blocker = psycopg2.connect(postgres_url)
    writer = threading.Thread(target=store.set, args=("held", {"answer": 2}))
    other = ThreadPoolExecutor(1)
    try:
        with blocker.cursor() as cursor:  # an open transaction holding the key "held"
            cursor.execute("INSERT INTO lsl_responses VALUES ('e1', 'held', '1')")
        writer.start()
        _wait_for_lock_waiter(postgres_url)
        lookup = other.submit(lambda: (store.get("other"), log.append({"stage": "s", "event": "x"})))
        assert lookup.result(timeout=10) == (None, None)
    finally:
        blocker.rollback()  # the writer goes on (and, before each thread had its own connection, the rest)
        writer.join(30)
        other.shutdown()
        blocker.close()
    assert store.get("held") == {"answer": 2}
    store.close()
    log.close()


def _wait_for_lock_waiter(url: str) -> None:
    con = psycopg2.connect(url)
    con.autocommit = True  # a fresh view of pg_stat_activity at each query
    try:
        deadline = time.monotonic() + 60  # a deadline, not a count of polls: a loaded machine is slow
        with con.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if cursor.fetchone()[0]:
                    return
                time.sleep(0.05)
    finally:
        con.close()
    raise AssertionError("the write never waited for the held key")


@pytest.mark.parametrize("where", ["local", "postgres"])
def test_pool_slots_hold_their_limit_and_a_waiter_gets_the_one_freed(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
):
    """The project's own lsl_llm slots (beside Dagster's pool): two holders get different slots of two,
    a third waits until one of them ends and then holds the freed one."""
    state = (
        LocalState(tmp_path / "runs")
        if where == "local"
        else PostgresState(request.getfixturevalue("postgres_url"))
    )
    order: list[str] = []
    with ExitStack() as first:
        taken = [first.enter_context(state.slot("lsl_llm", 2))]
        with state.slot("lsl_llm", 2) as second:
            taken.append(second)
            assert sorted(taken) == [0, 1]
            got: list[int] = []

            def third() -> None:
                with state.slot("lsl_llm", 2) as slot:
                    order.append("third holds a slot")
                    got.append(slot)

            waiter = threading.Thread(target=third)
            waiter.start()
            first.close()
            order.append("first ended")
            waiter.join(60)
            assert not waiter.is_alive()
        assert order == ["first ended", "third holds a slot"]
        assert got == [taken[0]]
