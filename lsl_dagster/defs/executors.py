"""Where a run's steps execute, chosen by LSL_EXECUTOR: in process (default), one process per step, or on
Celery workers (`dagster-celery worker start`, on any host that has the code and reaches the broker)."""

from __future__ import annotations

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor
from dagster_celery import celery_executor

from lsl_dagster.settings import Settings

# A step whose worker dies (kill -9, a lost host) is not lost with it: the broker delivers it again to
# another worker, which replays from the response cache what the first one paid for. Workers must be
# started with the same settings (deploy/celery.yaml).
CELERY_SETTINGS = {"task_acks_late": True, "task_reject_on_worker_lost": True}


def celery(settings: Settings) -> ExecutorDefinition:
    """The Celery executor. Broker and result backend are read from the environment when a run starts (so
    a password in the broker URL never lands in run config); LSL_CELERY_QUEUE names the queue the workers
    listen on (`-q`), so several deployments or test runs can share one broker."""
    if missing := settings.celery_missing:
        raise ValueError(
            f"LSL_EXECUTOR=celery needs {' and '.join(missing)} (e.g. amqp://guest:guest@127.0.0.1:5672// "
            "and rpc://)"
        )
    return celery_executor.configured(
        {
            "broker": {"env": "LSL_CELERY_BROKER"},
            "backend": {"env": "LSL_CELERY_BACKEND"},
            "config_source": {**CELERY_SETTINGS, "task_default_queue": settings.celery_queue},
        },
        name="lsl_celery",
    )


def executor_for(settings: Settings) -> ExecutorDefinition:
    choice = settings.executor
    if choice == "in_process":
        return in_process_executor
    if choice == "multiprocess":
        return multiprocess_executor
    if choice == "celery":
        return celery(settings)
    raise ValueError(f"LSL_EXECUTOR must be in_process, multiprocess or celery, not {choice!r}")
