"""`lsl campaign run`: what a campaign still needs, as ordinary Dagster runs started right away.

Each experiment is one run of the `lsl_experiment` job (Dagster's public `execute_job`), executed by a few
worker processes forked from `lsl` itself once it has imported Dagster, DSPy and the code location and
built the jobs: a worker starts warm and takes one experiment after another (no daemon tick, no run
queue, no per-run interpreter start or code location load). Every run carries the tags `lsl/campaign`
and `lsl/launch`, so the UI's run list shows a campaign (or one launch of it) as one unit (filter by the
tag); its runs can be re-executed there, and `lsl campaign run` again does what is left.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from lsl_dagster import graph
from lsl_dagster.llm.campaign_budget import pid_alive
from lsl_dagster.results.instance import FILE

CAMPAIGN_TAG = "lsl/campaign"
LAUNCH_TAG = "lsl/launch"
# Which process executes a run: lets a later launch recognize a run whose process was killed.
HOST_TAG, PID_TAG = "lsl/host", "lsl/pid"
UNFINISHED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


_jobs: dict[str, dg.JobDefinition] = {}


def _job(name: str) -> dg.JobDefinition:
    """A job of the code location, built once per process (`workers` builds them before the fork)."""
    if name not in _jobs:
        from lsl_dagster.definitions import build_definitions

        defs = build_definitions()
        _jobs.update({job: defs.resolve_job_def(job) for job in (*EXPERIMENT_JOBS, "lsl_campaign")})
    return _jobs[name]


# An experiment's job: the plain one, or with the optional arms for an experiment that lists `arms:`.
EXPERIMENT_JOBS = ("lsl_experiment", "lsl_experiment_with_arms")
OPTIONAL_ASSETS = frozenset(set(graph.ALL_STAGES) - set(graph.STAGES))


def experiment_job() -> dg.JobDefinition:
    """The job a worker runs (module-level, so that `dg.reconstructable` can rebuild it in a process)."""
    return _job("lsl_experiment")


def experiment_with_arms_job() -> dg.JobDefinition:
    return _job("lsl_experiment_with_arms")


def campaign_job() -> dg.JobDefinition:
    return _job("lsl_campaign")


@contextmanager
def workers(count: int, log_path: Path) -> Iterator[ProcessPoolExecutor]:
    """`count` worker processes forked from this one once it has built the jobs and imported the plots
    module (the summary run draws with matplotlib): every worker starts warm and none imports anything
    again. This process has no other thread when they fork."""
    _job("lsl_experiment")
    import lsl_dagster.results.plots  # noqa: F401

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(
        count,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(str(log_path),),
    ) as pool:
        yield pool


_instance: dg.DagsterInstance | None = None


def _start_worker(log_path: str) -> None:
    """Open the instance once per worker; Dagster's per-step log lines go to the launch's log file."""
    global _instance
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    _instance = dg.DagsterInstance.get()


def _execute(job: str, partition: str, assets: Sequence[str], tags: Mapping[str, str]) -> tuple[str, bool]:
    """One run, in a worker: (run id, success)."""
    assert _instance is not None, "the worker was not started"
    jobs = {
        "lsl_experiment": experiment_job,
        "lsl_experiment_with_arms": experiment_with_arms_job,
        "lsl_campaign": campaign_job,
    }
    target = dg.reconstructable(jobs[job])
    result = dg.execute_job(
        target,
        instance=_instance,
        tags={**tags, "dagster/partition": partition, PID_TAG: str(os.getpid())},
        asset_selection=[dg.AssetKey(asset) for asset in assets],
    )
    return result.run_id, result.success


def _experiment_job_of(assets: Sequence[str]) -> str:
    """The job that holds these assets of an experiment."""
    return EXPERIMENT_JOBS[1] if OPTIONAL_ASSETS.intersection(assets) else EXPERIMENT_JOBS[0]


# Between two experiments' ends, a line on the campaign's progress at least this often.
PROGRESS_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Outcome:
    experiment_id: str
    run_id: str | None
    success: bool
    error: str = ""


def run_experiments(
    pool: ProcessPoolExecutor,
    todo: Mapping[str, Sequence[str]],
    tags: Mapping[str, str],
    say: Callable[[str], None],
    spent: Callable[[], str] = lambda: "",
) -> list[Outcome]:
    """Each experiment's assets (experiment -> asset names) as one run, as many at a time as `pool` has
    workers. After each run, and every PROGRESS_INTERVAL_S while none ends, a line on the whole launch:
    experiments done, running, failed and waiting, and what `spent` says (calls and cost so far)."""
    tags = {**tags, HOST_TAG: socket.gethostname()}
    outcomes: list[Outcome] = []
    pending: dict[Future, str] = {
        pool.submit(_execute, _experiment_job_of(assets), e, [FILE.to_user_string(), *assets], tags): e
        for e, assets in todo.items()
    }

    def overall() -> str:
        running = sum(future.running() for future in pending)
        failed = sum(not o.success for o in outcomes)
        counts = (
            f"{len(outcomes) - failed} done, {running} running, {failed} failed, "
            f"{len(pending) - running} waiting of {len(todo)}"
        )
        return f"campaign progress: {counts}" + (f"; {text}" if (text := spent()) else "")

    while pending:
        done, _ = wait(pending, timeout=PROGRESS_INTERVAL_S, return_when=FIRST_COMPLETED)
        if not done:
            say(overall())
        # In submission order: `done` is a set, and runs ending at once would be numbered at random.
        for future in [f for f in pending if f in done]:
            experiment_id = pending.pop(future)
            try:
                run_id, success = future.result()
                outcomes.append(Outcome(experiment_id, run_id, success))
            except Exception as exc:  # the run could not even be created (a worker died)
                outcomes.append(Outcome(experiment_id, None, False, f"{type(exc).__name__}: {exc}"))
            last = outcomes[-1]
            verdict = "succeeded" if last.success else f"FAILED {last.error}".rstrip()
            say(f"{len(outcomes)}/{len(todo)} {experiment_id}: run {last.run_id} {verdict}")
        if done:
            say(overall())
    return outcomes


def run_summary(
    pool: ProcessPoolExecutor, campaign: str, assets: Sequence[str], tags: Mapping[str, str]
) -> tuple[str, bool]:
    """The run of the campaign's own assets (summary, transfer matrix), in a worker like the experiments
    (this process keeps its own instance)."""
    tags = {**tags, HOST_TAG: socket.gethostname()}
    return pool.submit(_execute, "lsl_campaign", campaign, assets, tags).result()


def new_launch_id() -> str:
    return uuid.uuid4().hex[:8]


def dead_runs(instance: dg.DagsterInstance, campaign: str) -> list[str]:
    """Runs of this campaign left unfinished by a launch that was killed: started on this machine by a
    worker process that is gone."""
    records = instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED, tags={CAMPAIGN_TAG: campaign}))
    host = socket.gethostname()
    return [
        r.dagster_run.run_id
        for r in records
        if r.dagster_run.tags.get(HOST_TAG) == host
        and r.dagster_run.tags.get(PID_TAG, "").isdigit()
        and not pid_alive(int(r.dagster_run.tags[PID_TAG]))
    ]


def cancel_runs(run_ids: Sequence[str]) -> None:
    """What the UI's "force termination" does (mark canceled, free the run's pool slots), through the
    same GraphQL API, with Dagster's own `dagster-graphql` command against this code location: one
    document for all the runs, so the code location loads once."""
    names = [f"r{i}" for i in range(len(run_ids))]
    document = (
        "mutation Cancel("
        + ", ".join(f"${n}: String!" for n in names)
        + ") {\n"
        + "".join(
            f"  t{n}: terminateRun(runId: ${n}, terminatePolicy: MARK_AS_CANCELED_IMMEDIATELY) "
            f"{{ __typename }}\n  f{n}: freeConcurrencySlotsForRun(runId: ${n})\n"
            for n in names
        )
        + "}"
    )
    variables = json.dumps(dict(zip(names, run_ids, strict=True)))
    binary = str(Path(sys.executable).with_name("dagster-graphql"))
    with tempfile.TemporaryDirectory() as tmp:
        answer_file = Path(tmp) / "answer.json"
        command = [
            binary,
            "-m",
            "lsl_dagster.definitions",
            "-t",
            document,
            "-v",
            variables,
            "-o",
            str(answer_file),
        ]
        subprocess.run(command, capture_output=True, check=True)
        answer = json.loads(answer_file.read_text())
    data = answer.get("data") or {}
    if answer.get("errors") or any(
        data.get(f"t{n}", {}).get("__typename") != "TerminateRunSuccess" for n in names
    ):
        raise RuntimeError(f"could not cancel the runs {', '.join(run_ids)}: {answer}")
