"""deploy/: the compose file a lab applies, checked as far as a machine without a container engine allows:
its structure and environment, the instance config rendered against a real PostgreSQL, the Celery workers'
config, and the code server started by itself, answering the way the webserver and daemon reach it."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster_celery.cli import get_validated_config
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from lsl_dagster.defs.executors import CELERY_SETTINGS
from lsl_dagster_tests.cluster import BROKER
from lsl_dagster_tests.conftest import PROJECT

DEPLOY = PROJECT / "deploy"
BIN = Path(sys.executable).parent


def _env_example() -> dict[str, str]:
    lines = (DEPLOY / "env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def _starts_after(services: dict, name: str) -> set[str]:
    """The services `name` waits for, directly or through others (compose's `<<` merges are shallow: a
    service's own depends_on replaces the shared one)."""
    direct = set(services[name].get("depends_on", {}))
    return direct.union(*(_starts_after(services, other) for other in direct))


def test_the_compose_file_runs_every_service_on_one_image_with_shared_storage():
    text = (DEPLOY / "compose.yaml").read_text()
    services = yaml.safe_load(text)["services"]
    assert set(services) == {"postgres", "broker", "code", "webserver", "daemon", "worker"}
    # Every variable the file uses is in the environment file a lab copies.
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= set(_env_example())
    lsl = {name: services[name] for name in ("code", "webserver", "daemon", "worker")}
    for name, service in lsl.items():
        assert service["image"] == "lsl_dagster:latest", name
        # Runs start in the code server, steps on the workers: all see the same experiment storage.
        assert "lsl-data:/data" in service["volumes"], name
        assert service["environment"]["LSL_RUNS_DIR"].startswith("/data/"), name
        assert service["environment"]["LSL_EXECUTOR"] == "celery", name
        assert {"postgres", "broker"} <= _starts_after(services, name), name
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "dagster-celery worker start" in services["worker"]["command"]
    # The files the containers read are the ones the image copies from deploy/.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for path in ("deploy/dagster.yaml", "deploy/workspace.yaml", "deploy/celery.yaml"):
        assert path in dockerfile and (PROJECT / path).exists()
    env = _env_example()
    assert env["LSL_CELERY_BROKER"].startswith(f"amqp://{env['RABBITMQ_USER']}:")


def test_the_deployment_instance_config_renders_against_postgres(tmp_path: Path, postgres_url: str):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    database = postgres_url.rsplit("/", 1)[1]
    env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_DB": database}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**env, "DAGSTER_PG_PASSWORD": "unused-with-trust-auth"}.items():
            patch.setenv(key, value)
        with DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
            assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
            assert instance.run_monitoring_enabled
            assert instance.get_concurrency_config().pool_config.default_pool_limit == 4
    # The workers' Celery settings are the executor's: a lost worker's step is redelivered.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LSL_CELERY_BROKER", BROKER)
        patch.setenv("LSL_CELERY_BACKEND", "rpc://")
        config = get_validated_config(str(DEPLOY / "celery.yaml"))
    assert config["broker"] == BROKER
    assert config["config_source"] == CELERY_SETTINGS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_code_server_starts_by_itself_and_serves_the_code_location(tmp_path: Path):
    port = _free_port()
    env = {
        **os.environ,
        **_env_example(),
        "DAGSTER_HOME": str(tmp_path),
        "LSL_EXECUTOR": "celery",
        "LSL_CELERY_BROKER": BROKER,
    }
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    command = compose["services"]["code"]["command"].split()
    assert command[:3] == ["dagster", "code-server", "start"]
    command = [str(BIN / "dagster"), *command[1:]]
    command[command.index("-h") + 1], command[command.index("-p") + 1] = "127.0.0.1", str(port)
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        health = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)]
        deadline = time.monotonic() + 180
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, "the code server exited"
            assert time.monotonic() < deadline, "the code server never answered"
            time.sleep(1)
        # The webserver and daemon load the location through deploy/workspace.yaml: here, on this host.
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
        workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=port)
        (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
        jobs = subprocess.run(
            [str(BIN / "dagster"), "job", "list", "-w", str(tmp_path / "workspace.yaml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert jobs.returncode == 0, jobs.stderr[-2000:]
        assert "lsl_experiment" in jobs.stdout.split()
    finally:
        server.terminate()
        server.wait(30)
