"""Where a run's steps execute, chosen by LSL_EXECUTOR: in process (default), one process per step, or on
Celery workers (`dagster-celery worker start`, on any host that has the code and reaches the broker)."""

from __future__ import annotations

import os

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor
from dagster_celery import celery_executor

# A step whose worker dies (kill -9, a lost host) is not lost with it: the broker delivers it again to
# another worker, which replays from the response cache what the first one paid for. Workers must be
# started with the same settings (deploy/celery.yaml).
CELERY_SETTINGS = {"task_acks_late": True, "task_reject_on_worker_lost": True}
CELERY_ENV = ("LSL_CELERY_BROKER", "LSL_CELERY_BACKEND")


def celery() -> ExecutorDefinition:
    """The Celery executor. Broker and result backend are read from the environment when a run starts (so
    a password in the broker URL never lands in run config); LSL_CELERY_QUEUE names the queue the workers
    listen on (`-q`), so several deployments or test runs can share one broker."""
    missing = [name for name in CELERY_ENV if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"LSL_EXECUTOR=celery needs {' and '.join(missing)} (e.g. amqp://guest:guest@127.0.0.1:5672// "
            "and rpc://)"
        )
    queue = os.environ.get("LSL_CELERY_QUEUE", "dagster")
    return celery_executor.configured(
        {
            "broker": {"env": "LSL_CELERY_BROKER"},
            "backend": {"env": "LSL_CELERY_BACKEND"},
            "config_source": {**CELERY_SETTINGS, "task_default_queue": queue},
        },
        name="lsl_celery",
    )


def executor_from_env() -> ExecutorDefinition:
    choice = os.environ.get("LSL_EXECUTOR", "in_process")
    if choice == "in_process":
        return in_process_executor
    if choice == "multiprocess":
        return multiprocess_executor
    if choice == "celery":
        return celery()
    raise ValueError(f"LSL_EXECUTOR must be in_process, multiprocess or celery, not {choice!r}")
