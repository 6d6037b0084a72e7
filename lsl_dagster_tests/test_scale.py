"""Scale is configuration: the same code on a Postgres-backed instance, with the multiprocess executor
or with steps on Celery workers."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunsFilter,
)
from dagster_postgres import PostgresRunStorage

from lsl_dagster.defs.assets import POOL
from lsl_dagster.graph import STAGES
from lsl_dagster.llm.cache import ResponseStore, cache_path
from lsl_dagster.llm.pg_state import PostgresState
from lsl_dagster.settings import PROJECT_DIR
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment_files import experiment_ids, load_experiment
from lsl_dagster_tests.cluster import CeleryWorkers
from lsl_dagster_tests.conftest import FAST, S3_BUCKET, Lab, make_lab
from lsl_dagster_tests.test_deploy import _free_port
from lsl_dagster_tests.test_resume import _outputs


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


# The steps that call LLMs (pool "lsl_llm") and the stage name their calls are logged under.
LLM_STEPS = {
    "stage1_prompt": "stage1",
    "stage2_hardened_prompt": "stage2",
    "budget_matched_prompt": "budget_matched",
    "baseline_evaluation": "baseline_evaluation",
    "stage3_evaluation": "stage3_evaluation",
    "budget_matched_evaluation": "budget_matched_evaluation",
}
POOL_LIMIT, MAX_CONCURRENCY = 2, 3
# A campaign's settings shared by its experiments: FAST's, minus what the grid sets.
SHARED = {k: v for k, v in FAST.items() if k not in ("task", "large_model", "small_model", "seed")}


def _postgres_home(path: Path, postgres_url: str, pool_limit: int = POOL_LIMIT, **more: Any) -> Path:
    path.mkdir()
    settings = {
        "storage": {"postgres": {"postgres_url": postgres_url}},
        "telemetry": {"enabled": False},
        "concurrency": {"pools": {"default_limit": pool_limit}},
        **more,
    }
    (path / "dagster.yaml").write_text(yaml.safe_dump(settings))
    # Create the schema and the pool's limit once, as a deployment does: runs starting together on a
    # fresh database would race to insert the pool's default limit (a unique-key violation).
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "instance", "concurrency", "set", POOL, str(pool_limit)]
    subprocess.run(command, env={**os.environ, "DAGSTER_HOME": str(path)}, check=True, capture_output=True)
    return path


def _celery_steps(instance: DagsterInstance) -> list[tuple[str, str, str, bool]]:
    """(experiment, step, worker, finished) for every step a Celery worker started, from the event log."""
    steps = []
    for run in instance.get_runs():
        logs = instance.all_logs(
            run.run_id, of_type={DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_SUCCESS}
        )
        succeeded = {e.step_key for e in logs if e.dagster_event_type == DagsterEventType.STEP_SUCCESS}
        for entry in logs:
            event = entry.dagster_event
            if event is None or event.event_type != DagsterEventType.ENGINE_EVENT:
                continue
            worker = event.engine_event_data.metadata.get("Celery worker")
            if worker is not None:
                partition = run.tags["dagster/partition"]
                steps.append((partition, entry.step_key, worker.value, entry.step_key in succeeded))
    return steps


class InFlight:
    """Requests in flight across several servers, and the most at once."""

    def __init__(self) -> None:
        self.now = self.max = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.now += n
            self.max = max(self.max, self.now)


class GaugedSimServer(SimServer):
    def __init__(self, gauge: InFlight, **settings: Any):
        super().__init__(**settings)
        self.gauge = gauge

    def begin(self) -> int:
        self.gauge.add(1)
        return super().begin()

    def end(self) -> None:
        super().end()
        self.gauge.add(-1)


def _paid(state: PostgresState, experiment_id: str, stage: str) -> int:
    return sum(r["stage"] == stage and "event" not in r for r in state.calls(experiment_id))


def _wait_until_kept(answered: Callable[[], int], kept: Callable[[], tuple[int, int]]) -> None:
    """Wait until the client has logged and cached every reply a frozen server sent: a reply still being
    read, logged or stored when the process dies was served but not kept, so its retry would pay again."""
    deadline = time.monotonic() + 60
    while True:
        sent, (logged, cached) = answered(), kept()
        if logged == cached == sent:
            return
        assert logged <= sent and cached <= sent, f"kept {logged} logged, {cached} cached of {sent} answers"
        assert time.monotonic() < deadline, f"of {sent} answers, {logged} were logged and {cached} cached"
        time.sleep(0.01)


def test_a_campaign_on_celery_workers_sharing_no_disk_survives_a_killed_worker_without_repaying(
    lab: Lab, tmp_path: Path, postgres_url: str, s3: Any
):
    """Six experiments on the Postgres instance, steps on two Celery workers that share no disk: each has a
    runs directory of its own, outputs and predictions are on object storage, call logs and response
    caches in the instance's database. One worker is killed -9 mid-step and its step finishes on the
    other, which replays from the database what the first paid for: no request is paid twice."""
    home = _postgres_home(tmp_path / "postgres_home", postgres_url)
    state = PostgresState(postgres_url)
    lab.outputs_url = f"s3://{S3_BUCKET}/runs"
    scratch = {name: tmp_path / f"{name}_runs" for name in ("launcher", "w1", "w2")}
    # One server per experiment, so each server's counts are one experiment's calls (experiments of a
    # campaign send some identical requests); in flight is also counted across all of them.
    gauge = InFlight()
    servers = [GaugedSimServer(gauge, latency_s=0.03).start() for _ in range(6)]
    retired: list[SimServer] = []
    (lab.data_dir / "campaigns").mkdir()
    pairs = []
    for n, server in enumerate(servers):
        http = {"api_base": server.url, "max_concurrency": MAX_CONCURRENCY}
        large, small = {"model": "openai/sim-large", **http}, {"model": "openai/sim-small", **http}
        pairs.append({"name": f"p{n}", "large_model": large, "small_model": small})
    campaign = {
        "campaign": "wide",
        "tasks": ["arithmetic"],
        "model_pairs": pairs,
        "seeds": [0],
        "experiment": SHARED,
    }
    (lab.data_dir / "campaigns" / "wide.yaml").write_text(yaml.safe_dump(campaign))
    ids = experiment_ids(lab.data_dir)
    assert len(ids) == 6

    shared = {"LSL_OUTPUTS_URL": lab.outputs_url, "LSL_CACHE_URL": postgres_url}
    workers = CeleryWorkers(lab.env(DAGSTER_HOME=str(home), **shared), tmp_path / "workers")
    runs: dict[str, subprocess.Popen] = {}
    instance = DagsterInstance.from_config(str(home))
    try:
        killed_node = workers.start("w1", LSL_RUNS_DIR=str(scratch["w1"]))
        survivor = workers.start("w2", LSL_RUNS_DIR=str(scratch["w2"]))
        for experiment in ids:
            runs[experiment] = subprocess.Popen(
                lab.materialize_command(experiment),
                env={**workers.env, "LSL_RUNS_DIR": str(scratch["launcher"])},
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / f"{experiment}.log").open("w"),
            )
        # Wait until w1 is well into an LLM step, then take it away (kill -9 of the worker and its pool).
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline, "no LLM step got going on w1"
            assert all(p.poll() is None for p in runs.values()), "a run ended before w1 could be killed"
            busy = [
                (experiment, step)
                for experiment, step, worker, finished in _celery_steps(instance)
                if worker == killed_node and step in LLM_STEPS and not finished
            ]
            if any(_paid(state, e, LLM_STEPS[s]) >= 10 for e, s in busy):
                break
            time.sleep(0.1)
        # Freeze the provider first so what is in flight on w1 is never answered (never paid): a reply in
        # the instant before a real crash would be paid again (at most max_concurrency calls).
        for server in servers:
            server.freeze()
        _wait_until_kept(
            lambda: sum(server.served for server in servers),
            lambda: (
                sum(r["ok"] for e in ids for r in state.calls(e) if "event" not in r),
                sum(len(state.responses(e)) for e in ids),
            ),
        )
        interrupted = {
            (experiment, step)
            for experiment, step, worker, finished in _celery_steps(instance)
            if worker == killed_node and step in LLM_STEPS and not finished
        }
        workers.kill("w1")
        # What w1 had in flight is dropped unanswered: its experiments' servers restart on the same port
        # (counts add up below); the others answer what they held.
        hit = {load_experiment(lab.data_dir, e).large_model.api_base for e, _ in interrupted}
        for n, server in enumerate(servers):
            if server.url in hit:
                server.stop()
                # Its dropped requests leave the gauge as their handler threads notice the stop: wait,
                # so that w1's dead requests are not counted as in flight beside w2's live ones.
                settled = time.monotonic() + 30
                while server.in_flight and time.monotonic() < settled:
                    time.sleep(0.01)
                assert server.in_flight == 0, "the stopped server's handlers did not end"
                retired.append(server)
                servers[n] = GaugedSimServer(gauge, latency_s=0.03, port=server.port).start()
            else:
                server.release()
        for experiment, process in runs.items():
            assert process.wait(600) == 0, (tmp_path / f"{experiment}.log").read_text()[-3000:]
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
        workers.close()
        for server in servers:
            server.stop()

    # The campaign completed, recorded in the Postgres registry.
    for experiment in ids:
        assert lab.output(experiment, "comparison")["experiment_id"] == experiment
    comparisons = AssetRecordsFilter(asset_key=AssetKey("comparison"), asset_partitions=ids)
    assert (
        sorted(r.partition_key for r in instance.fetch_materializations(comparisons, limit=100).records)
        == ids
    )
    # Both workers took steps; each step killed on w1 finished on w2.
    steps = _celery_steps(instance)
    assert {worker for _, _, worker, _ in steps} == {killed_node, survivor}
    assert interrupted
    for experiment, step in interrupted:
        assert (experiment, step, survivor, True) in steps
    # The lsl_llm pool held across both workers (4 worker slots, 2 pool slots): at most 2 LLM steps, each
    # with max_concurrency calls in flight; more than one step's worth shows they did run side by side.
    assert MAX_CONCURRENCY < gauge.max <= POOL_LIMIT * MAX_CONCURRENCY

    # Nothing of an experiment's state was on a worker's disk: no call log, no response cache, no output.
    assert not lab.runs_dir.exists()
    for directory in scratch.values():
        local = {p.name for p in directory.rglob("*") if p.is_file()}
        assert not local & {"calls.jsonl", "responses.sqlite", "comparison.json"}, directory

    # Each interrupted experiment paid for exactly the requests an uninterrupted run pays for, and
    # concluded the same.
    for experiment in {e for e, _ in interrupted}:
        url = load_experiment(lab.data_dir, experiment).large_model.api_base
        served: Counter[str] = Counter()
        for server in (s for s in [*retired, *servers] if s.url == url):
            served.update(server.served_requests)
        assert (served, _outputs(lab, experiment)) == _uninterrupted(lab, experiment, tmp_path)


def _uninterrupted(lab: Lab, experiment: str, tmp_path: Path) -> tuple[Counter[str], dict]:
    """The requests an uninterrupted run of the experiment pays for (in process, with a server of its own)
    and what it concludes."""
    with make_lab(tmp_path / f"ref-{experiment}") as reference, SimServer().start() as ref_server:
        spec = load_experiment(lab.data_dir, experiment).model_dump(mode="json")
        ref_spec = {k: v for k, v in spec.items() if k != "experiment_id"}
        for role in ("large_model", "small_model"):
            ref_spec[role] = {**spec[role], "api_base": ref_server.url}
        reference.write("ref", **ref_spec)
        assert reference.run("ref").success
    return ref_server.served_requests, _outputs(reference, "ref")


def test_a_run_whose_process_is_killed_is_retried_from_failure_without_repaying(
    lab: Lab, tmp_path: Path, postgres_url: str
):
    """The deployment's run retries and run monitoring: a run launched through the code server (as from
    the UI) loses its process to kill -9 mid-stage. The code server reports the run failed; run
    monitoring frees the pool slot the dead run held (the pool's only one here, so the retry cannot start
    its LLM steps without it); the daemon retries the run from failure. The retry pays for no request
    the dead run paid for, and concludes what an uninterrupted run does."""
    deploy = yaml.safe_load((PROJECT_DIR / "deploy" / "dagster.yaml").read_text())
    monitoring = {
        **deploy["run_monitoring"],
        "poll_interval_seconds": 1,
        "free_slots_after_run_end_seconds": 1,
    }
    home = _postgres_home(
        tmp_path / "home",
        postgres_url,
        pool_limit=1,
        run_monitoring=monitoring,
        run_retries=deploy["run_retries"],
    )
    port = _free_port()
    workspace = tmp_path / "workspace.yaml"
    location = {"host": "127.0.0.1", "port": port, "location_name": "lsl_dagster"}
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": location}]}))
    server = SimServer(latency_s=0.03).start()
    retired = []
    lab.write(
        "retried",
        large_model={"model": "openai/sim-large", "api_base": server.url},
        small_model={"model": "openai/sim-small", "api_base": server.url},
    )
    env = lab.env(DAGSTER_HOME=str(home))
    dagster = str(Path(sys.executable).with_name("dagster"))
    code = [dagster, "code-server", "start", "-h", "127.0.0.1", "-p", str(port)]
    services: list[subprocess.Popen] = []
    instance = DagsterInstance.from_config(str(home))
    try:
        for command in (
            [*code, "-m", "lsl_dagster.definitions", "--location-name", "lsl_dagster"],
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
        ):
            log = (tmp_path / f"{Path(command[0]).name}.log").open("w")
            services.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        health = [dagster, "api", "grpc-health-check", "-p", str(port)]
        deadline = time.monotonic() + 120
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the code server did not start"
            time.sleep(1)
        tags = json.dumps({"dagster/partition": "retried"})
        launch = [dagster, "job", "launch", "-w", str(workspace), "-j", "lsl_experiment", "--tags", tags]
        launched = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
        assert launched.returncode == 0, launched.stderr[-3000:]
        (run,) = instance.get_runs()

        deadline = time.monotonic() + 300
        while len(lab.calls("retried", "stage1")) < 10:
            assert time.monotonic() < deadline, "stage 1 did not get going"
            assert not instance.get_run_by_id(run.run_id).is_finished, "the run ended before it was killed"
            time.sleep(0.1)
        server.freeze()  # what is in flight is never answered, so never paid (see the Celery test)
        with ResponseStore(cache_path(lab.runs_dir / "retried")) as cached:
            _wait_until_kept(
                lambda: server.served, lambda: (sum(r["ok"] for r in lab.calls("retried")), len(cached))
            )
        # The run's process (in-process executor: its steps run there too), as its engine events name it.
        engine = [
            e.dagster_event.engine_event_data.metadata
            for e in instance.all_logs(run.run_id)
            if e.dagster_event_type == DagsterEventType.ENGINE_EVENT
        ]
        (pid,) = {int(metadata["pid"].value) for metadata in engine if "pid" in metadata}
        os.kill(pid, signal.SIGKILL)
        server.stop()
        retired.append(server)
        server = SimServer(latency_s=0.03, port=server.port).start()

        deadline = time.monotonic() + 600
        while True:
            retries = instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": run.run_id}))
            if retries and retries[0].is_finished:
                break
            assert time.monotonic() < deadline, "the run was not retried to the end"
            time.sleep(1)
    finally:
        for service in services:
            service.send_signal(signal.SIGINT)
        for service in services:
            try:
                service.wait(60)
            except subprocess.TimeoutExpired:
                service.kill()
        server.stop()

    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    (retry,) = retries
    assert retry.status == DagsterRunStatus.SUCCESS
    assert retry.tags["dagster/retry_number"] == "1"
    # From failure: what the dead run finished is kept, the stage it died in and everything after run again.
    steps = {e.step_key for e in instance.all_logs(retry.run_id, of_type=DagsterEventType.STEP_START)}
    assert "experiment_file" not in steps and {"stage1_prompt", "comparison"} <= steps
    served: Counter[str] = Counter()
    for used in [*retired, server]:
        served.update(used.served_requests)
    assert (served, _outputs(lab, "retried")) == _uninterrupted(lab, "retried", tmp_path)
