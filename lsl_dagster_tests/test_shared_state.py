"""Call logs, response caches and stage locks in PostgreSQL (LSL_CACHE_URL): what a worker on another host,
sharing no disk, needs to replay what was paid for and to keep the budgets."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import instance_for_test

from lsl_dagster.pg_state import PostgresState
from lsl_dagster.sim_server import SimServer
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
from lsl_dagster.pg_state import PostgresState
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
