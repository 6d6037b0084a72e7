"""The scale-out pieces for tests and bench/: a fresh database on the machine's PostgreSQL server, and Celery
workers (`dagster-celery worker start`, as a lab starts them) on a queue of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from kombu import Connection

from lsl_dagster.settings import PROJECT_DIR

# Services the machine runs (before the session and in CI); the variables point elsewhere.
POSTGRES_SERVER = os.environ.get("LSL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("LSL_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
WORKER_CONFIG = PROJECT_DIR / "deploy" / "celery.yaml"
BIN = Path(sys.executable).parent


class ServiceMissing(RuntimeError):
    pass


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database with a unique name on the PostgreSQL server, dropped afterwards; yields its URL."""
    server = urlsplit(POSTGRES_SERVER)
    name = f"lsl_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(POSTGRES_SERVER, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise ServiceMissing(
            f"no PostgreSQL server at {server.hostname}:{server.port} ({exc}); set LSL_TEST_POSTGRES"
        ) from None
    admin.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(server._replace(path=f"/{name}"))
        with admin.cursor() as cursor:
            # FORCE: a run or worker a failed test left behind must not keep the database alive.
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@dataclass
class CeleryWorkers:
    """Celery worker processes listening on one queue of their own, so parallel test runs sharing a broker
    never take each other's steps. `env` is what runs and workers both need (LSL_EXECUTOR=celery, ...)."""

    env: dict[str, str]
    logs: Path
    concurrency: int = 2
    queue: str = field(default_factory=lambda: f"lsl-test-{uuid.uuid4().hex[:8]}")
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {
            **self.env,
            "PATH": f"{BIN}{os.pathsep}{self.env.get('PATH', '')}",  # dagster-celery starts `celery`
            "LSL_EXECUTOR": "celery",
            "LSL_CELERY_BROKER": BROKER,
            "LSL_CELERY_BACKEND": "rpc://",
            "LSL_CELERY_QUEUE": self.queue,
        }
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, **env: str) -> str:
        """Start a worker (`env`: settings of its own, e.g. its LSL_RUNS_DIR); its node name (as Dagster's
        engine events report it) is returned."""
        node = f"{name}-{self.queue}"
        command = [
            str(BIN / "dagster-celery"),
            *("worker", "start", "-A", "dagster_celery.app", "-y", str(WORKER_CONFIG)),
            *("-q", self.queue, "-n", node, "--", f"--concurrency={self.concurrency}"),
        ]
        log = (self.logs / f"{name}.log").open("w")
        # Its own session: kill() takes the CLI, the Celery main process and its pool children together.
        self.processes[name] = subprocess.Popen(
            command, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return f"{node}@{os.uname().nodename}"

    def kill(self, name: str) -> None:
        """kill -9 a worker and everything it started: a host going away."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    def close(self) -> None:
        for name in list(self.processes):
            self.kill(name)
        with Connection(BROKER, connect_timeout=10) as connection:
            connection.default_channel.queue_delete(self.queue)

    def __enter__(self) -> CeleryWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
