"""A worker whose experiment state (call log, response cache) is not where the experiment's earlier stages
kept theirs would pay again for everything they paid for: its stage refuses to start, before any call.
A runs directory moved whole, or the same database spelled another way, is not refused."""

import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from lsl_dagster.llm.pg_state import PostgresState
from lsl_dagster_tests.conftest import S3_BUCKET, Lab

PASSWORD = "hunter2-secret"  # the server trusts local connections: a password in the URL is ignored


def _with_password(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"))


def _refusal(lab: Lab, experiment_id: str, asset: str) -> str:
    result = lab.run(experiment_id, [asset], raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node(asset)
    assert failure is not None
    return failure.error.message


@pytest.mark.parametrize("first_with_cache_url", [True, False], ids=["pg-then-local", "local-then-pg"])
def test_a_stage_refuses_to_start_where_the_earlier_stages_state_is_not(
    lab: Lab, postgres_url: str, monkeypatch: pytest.MonkeyPatch, first_with_cache_url: bool
):
    url = _with_password(postgres_url)
    lab.write("moved-state")

    def cache_url(on: bool) -> None:
        if on:
            monkeypatch.setenv("LSL_CACHE_URL", url)
        else:
            monkeypatch.delenv("LSL_CACHE_URL", raising=False)

    cache_url(first_with_cache_url)
    assert lab.run("moved-state", ["experiment_file", "stage1_prompt"]).success
    stage1_calls = len(lab.calls("moved-state")) + len(_pg_calls(postgres_url, "moved-state"))
    assert stage1_calls > 0

    # A worker set up the other way: Stage 2 fails before it calls anything, naming both places.
    cache_url(not first_with_cache_url)
    message = _refusal(lab, "moved-state", "stage2_hardened_prompt")
    local = f"local:{lab.runs_dir.resolve()}"
    pg = f"postgresql://{urlsplit(postgres_url).username}@{urlsplit(postgres_url).hostname}:"
    assert local in message and pg in message
    assert "stage1_prompt" in message and "LSL_CACHE_URL" in message
    assert PASSWORD not in message
    assert len(lab.calls("moved-state")) + len(_pg_calls(postgres_url, "moved-state")) == stage1_calls

    # Set up as before, it runs; Stage 1's metadata names where its state is, without the password.
    cache_url(first_with_cache_url)
    assert lab.run("moved-state", ["stage2_hardened_prompt"]).success
    where = lab.metadata("moved-state", "stage1_prompt")["experiment_state"]
    assert where.startswith(pg if first_with_cache_url else local)
    assert PASSWORD not in where


def test_the_same_database_spelled_another_way_is_not_refused(
    lab: Lab, postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    lab.write("respelled")
    monkeypatch.setenv("LSL_CACHE_URL", postgres_url)
    assert lab.run("respelled", ["experiment_file", "stage1_prompt"]).success
    parts = urlsplit(postgres_url)
    host = "localhost" if parts.hostname == "127.0.0.1" else parts.hostname
    monkeypatch.setenv(
        "LSL_CACHE_URL", urlunsplit(parts._replace(netloc=f"{parts.username}@{host}:{parts.port}"))
    )
    assert lab.run("respelled", ["stage2_hardened_prompt"]).success


def test_a_worker_with_its_own_runs_directory_is_refused_and_a_moved_one_is_not(
    lab: Lab, s3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Outputs in a bucket every worker reads, state left in each worker's runs directory (LSL_CACHE_URL
    forgotten): a worker with another runs directory is refused; the first one's directory moved whole
    (LSL_RUNS_DIR names its new place) carries its state along and runs."""
    monkeypatch.setenv("LSL_OUTPUTS_URL", f"s3://{S3_BUCKET}/runs")
    lab.write("own-dirs")
    assert lab.run("own-dirs", ["experiment_file", "stage1_prompt"]).success
    paid = len(lab.calls("own-dirs"))

    other = Lab(lab.data_dir, tmp_path / "other-runs", lab.instance)
    message = _refusal(other, "own-dirs", "stage2_hardened_prompt")
    assert f"local:{other.runs_dir.resolve()}" in message and f"local:{lab.runs_dir.resolve()}" in message
    assert other.calls("own-dirs") == []
    assert "stage1_prompt" in _refusal(other, "own-dirs", "stage1_prompt")  # nor made again there
    assert other.calls("own-dirs") == []

    moved = Lab(lab.data_dir, tmp_path / "shared" / "runs", lab.instance)
    moved.runs_dir.parent.mkdir()
    shutil.move(lab.runs_dir, moved.runs_dir)
    assert moved.run("own-dirs", ["stage2_hardened_prompt"]).success
    assert len(moved.calls("own-dirs", "stage1")) == paid


def _pg_calls(url: str, experiment_id: str) -> list[dict]:
    return [r for r in PostgresState(url).calls(experiment_id) if "event" not in r]
