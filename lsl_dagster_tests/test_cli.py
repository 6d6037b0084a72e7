"""`lsl` over a real Dagster instance: status, results, export and plot read what the runs recorded."""

import csv
import dataclasses
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey

from lsl_dagster.cli import main
from lsl_dagster.records import Comparison
from lsl_dagster.results.arms import arm_cis
from lsl_dagster.results.export import COLUMNS
from lsl_dagster_tests.conftest import STAGE_ASSETS, Lab


@pytest.fixture
def cli_env(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """The CLI reads DagsterInstance.get() and builds the code location from the LSL_* variables."""
    monkeypatch.setenv("DAGSTER_HOME", lab.instance.root_directory)
    monkeypatch.setenv("LSL_DATA_DIR", str(lab.data_dir))
    monkeypatch.setenv("LSL_RUNS_DIR", str(lab.runs_dir))
    return lab


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def status_table(out: str) -> dict[str, list[str]]:
    """experiment -> the status of each stage, parsed from the table (statuses are separated by 2+ spaces)."""
    lines = [line for line in out.splitlines() if line and ":" not in line]
    return {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.split("  ") if c.strip()] for line in lines[1:])
    }


def expected_rows(comparison: dict) -> list[dict]:
    """The export rows, built independently from the comparison asset's JSON file."""
    c = Comparison.model_validate(comparison)
    diffs = {d["arm"]: d for d in comparison["differences"] if d["baseline"] == "baseline"}
    signal = comparison["stage2_signal"]
    replies = signal and signal["replies"]
    parse_share = (replies - signal["unparseable"]) / replies if replies else None
    rows = []
    for arm in comparison["arms"]:
        d = diffs.get(arm["arm"], {})
        rows.append(
            {
                **{
                    k: comparison[k]
                    for k in ("experiment_id", "task", "large_model", "small_model", "simulated")
                },
                **{k: arm[k] for k in ("arm", "score", "n", "optimization_calls")},
                "evaluation_calls": arm["calls"],
                "evaluation_cost_usd": arm["cost_usd"],
                "diff_vs_baseline": d.get("diff"),
                **{k: d.get(k) for k in ("ci_low", "ci_high", "test", "p_value", "p_holm", "verdict")},
                "total_calls": sum(ledger.calls for ledger in c.usage.values()),
                "total_cost_usd": sum(ledger.cost_usd for ledger in c.usage.values()),
                **{k: arm[k] for k in ("n_wrong", "n_unparseable", "n_truncated", "n_adapter_fallbacks")},
                **{k: arm[k] for k in ("n_provider_failures", "n_program_errors", "format_warning")},
                "stage2_unchanged": comparison["stage2_unchanged"],
                "stage2_parse_share": parse_share,
                **{f"stage2_{k}": (signal or {}).get(k) for k in ("probe_score", "no_signal")},
                **{k: comparison[k] for k in ("stage2_start_val_score", "stage2_val_score")},
            }
        )
    return rows


def test_status_results_export_and_plot(cli_env: Lab, capsys: pytest.CaptureFixture, tmp_path: Path):
    lab = cli_env
    lab.write("exp-full")
    lab.write("exp-part")
    assert lab.run("exp-full").success
    assert lab.run("exp-part", ["experiment_file", "stage1_prompt"]).success

    code, out, err = run_cli(capsys, "status")
    assert (code, err) == (0, "")
    table = status_table(out)
    assert table["exp-full"] == ["materialized"] * 7
    assert table["exp-part"] == ["materialized"] + ["missing"] * 6
    assert "exp-full: done" in out and "exp-part: next: stage2_hardened_prompt (missing)" in out

    comparison = lab.output("exp-full", "comparison")
    code, out, err = run_cli(capsys, "results")
    assert (code, err) == (0, "")
    for arm in comparison["arms"]:
        assert f"{'exp-full (sim)':<24} {arm['arm']:<15} {arm['score']:>6.3f} {arm['n']:>5}" in out
    for d in comparison["differences"]:
        assert d["verdict"] in out
        if d["baseline"] == "baseline":
            assert f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" in out
    assert f"assets, predictions and call log in {lab.runs_dir / 'exp-full'}" in out
    # exp-part is known but has no comparison yet: results for it is a clear error.
    code, _, err = run_cli(capsys, "results", "exp-part")
    assert code == 2 and "no comparison has been materialized for exp-part" in err

    expected = expected_rows(comparison)
    assert [row["arm"] for row in expected] == ["baseline", "lsl", "budget_matched"]
    for fmt in ("json", "csv", "parquet"):
        path = tmp_path / "out" / f"results.{fmt}"
        code, out, err = run_cli(capsys, "export", "--format", fmt, "-o", str(path))
        assert (code, err) == (0, "")
        if fmt == "json":
            assert json.loads(path.read_text()) == expected
        elif fmt == "csv":
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            assert list(rows[0]) == list(COLUMNS)
            assert rows == [{k: "" if v is None else str(v) for k, v in row.items()} for row in expected]
            assert [float(r["ci_low"]) for r in rows[1:]] == [r["ci_low"] for r in expected[1:]]
        else:
            assert pq.read_table(path).to_pylist() == expected
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "results.csv",
        "results.json",
        "results.parquet",
    ]

    png = tmp_path / "arms.png"
    code, out, err = run_cli(capsys, "plot", "-o", str(png))
    assert (code, err) == (0, "")
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".arms.png")] == []
    # The error bars: each arm's own 95% bootstrap CI, around its score.
    cis = arm_cis(lab.instance, Comparison.model_validate(comparison), lab.runs_dir)
    for arm in comparison["arms"]:
        low, high = cis[arm["arm"]]
        assert low < arm["score"] < high, (arm, low, high)

    # Editing exp-part's file makes its stage 1 stale; `lsl status` only reads: nothing is recorded.
    path = lab.data_dir / "experiments" / "exp-part.yaml"
    path.write_text(path.read_text().replace("seed: 0", "seed: 1"))
    events = lab.instance.fetch_observations(AssetKey("experiment_file"), limit=100).records
    code, out, _ = run_cli(capsys, "status")
    assert code == 0
    table = status_table(out)
    assert table["exp-part"] == ["stale"] + ["missing"] * 6
    assert table["exp-full"] == ["materialized"] * 7
    assert "exp-part: next: stage1_prompt (stale)" in out
    assert lab.instance.fetch_observations(AssetKey("experiment_file"), limit=100).records == events
    # Re-materializing stage 1 alone leaves everything after it stale: it consumed the old stage 1.
    path.write_text(path.read_text().replace("seed: 1", "seed: 0"))
    lab.write("exp-full", seed=3)
    assert lab.run("exp-full", ["experiment_file", "stage1_prompt"]).success
    code, out, _ = run_cli(capsys, "status", "exp-full")
    assert status_table(out) == {"exp-full": ["materialized"] + ["stale"] * 6}


def test_status_is_current_right_after_a_run_from_the_shell(cli_env: Lab, tmp_path: Path):
    """Issue 16: `lsl status` said `stage1 stale` right after a successful run, and every `lsl` command
    printed Dagster's warning about a missing dagster.yaml."""
    lab = cli_env
    lab.write("exp-shell")
    home = tmp_path / "bare_home"  # an instance without dagster.yaml: Dagster's defaults
    home.mkdir()
    env = lab.env(DAGSTER_HOME=str(home))
    lsl = str(Path(sys.executable).with_name("lsl"))
    # A single stage first, as a user might, then the rest: nothing observed the file in between.
    select = ["--select", "stage1_prompt", "--partition", "exp-shell"]
    dagster = str(Path(sys.executable).with_name("dagster"))
    subprocess.run(
        [dagster, "asset", "materialize", "-m", "lsl_dagster.definitions", *select],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(lab.materialize_command("exp-shell"), env=env, check=True, capture_output=True)
    status = subprocess.run([lsl, "status"], env=env, capture_output=True, text=True)
    assert (status.returncode, status.stderr) == (0, "")
    assert status_table(status.stdout) == {"exp-shell": ["materialized"] * 7}
    assert "exp-shell: done" in status.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_status_shows_the_stage_that_failed(cli_env: Lab, capsys: pytest.CaptureFixture):
    lab = cli_env
    # The small model's server is down: stage 1 (large model) succeeds, stage 2 fails, and the steps after
    # it never run (every evaluation waits for every prompt, graph.waits_for).
    lab.write(
        "exp-down",
        small_model={"model": "openai/sim-small", "api_base": f"http://127.0.0.1:{_free_port()}/v1"},
    )
    assert not lab.run("exp-down", raise_on_error=False, num_retries=0).success

    code, out, err = run_cli(capsys, "status", "exp-down")
    assert (code, err) == (0, "")
    statuses = dict(zip(STAGE_ASSETS, status_table(out)["exp-down"], strict=True))
    assert statuses == {
        "stage1_prompt": "materialized",
        "stage2_hardened_prompt": "failed",
        "budget_matched_prompt": "missing",
        "baseline_evaluation": "missing",
        "stage3_evaluation": "missing",
        "budget_matched_evaluation": "missing",
        "comparison": "missing",
    }
    assert "exp-down: next: stage2_hardened_prompt (failed)" in out


def test_clear_errors(
    cli_env: Lab, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    lab = cli_env
    lab.write("exp-x")
    out_file = str(tmp_path / "x.csv")
    commands = [
        ["status"],
        ["results"],
        ["export", "--format", "csv", "-o", out_file],
        ["plot", "-o", out_file],
    ]
    for argv in commands:  # nothing has run in this instance yet
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == "", argv
        assert err.startswith("lsl: no ") and "materialized yet" in err, err
        assert "Traceback" not in err
    for argv in commands:
        code, _, err = run_cli(capsys, *argv, "nope")
        assert code == 2 and "unknown experiment(s): nope (known: exp-x)" in err, (argv, err)
    assert not (tmp_path / "x.csv").exists()

    monkeypatch.delenv("DAGSTER_HOME")
    code, _, err = run_cli(capsys, "results")
    assert code == 2
    assert err == "lsl: DAGSTER_HOME is not set: point it at the Dagster instance the experiments ran in\n"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no-such-dir"))
    code, _, err = run_cli(capsys, "status")
    assert code == 2 and "is not a directory or does not exist" in err


def test_moving_the_runs_directory_keeps_results_plots_and_runs_working(
    cli_env: Lab, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    lab = cli_env
    lab.write("exp-move")
    assert lab.run("exp-move").success
    assert lab.metadata("exp-move", "comparison")["path"] == "exp-move/comparison.json"
    assert lab.output("exp-move", "stage3_evaluation")["predictions_path"] == "exp-move/predictions/lsl.jsonl"
    arms = lab.output("exp-move", "comparison")["arms"]

    moved = tmp_path / "shared-storage" / "runs"
    moved.parent.mkdir()
    shutil.move(lab.runs_dir, moved)
    monkeypatch.setenv("LSL_RUNS_DIR", str(moved))
    code, out, err = run_cli(capsys, "results", "exp-move")
    assert (code, err) == (0, "")
    assert f"assets, predictions and call log in {moved / 'exp-move'}" in out
    png = tmp_path / "moved.png"
    code, _, err = run_cli(capsys, "plot", "exp-move", "-o", str(png))
    assert (code, err) == (0, "") and png.read_bytes().startswith(b"\x89PNG")
    # Dagster reads the moved outputs too: the comparison is made again from them, its checks pass.
    relocated = dataclasses.replace(lab, runs_dir=moved)
    result = relocated.run("exp-move", ["comparison"])
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks)
    assert lab.materializations("exp-move", "comparison") == 2
    assert relocated.output("exp-move", "comparison")["arms"] == arms  # paired from the moved predictions


def test_an_invalid_experiment_file_spoils_only_itself(cli_env: Lab, capsys: pytest.CaptureFixture):
    lab = cli_env
    lab.write("exp-good")
    bad = lab.write("exp-bad", stage1={"max_calls": "lots"})
    assert lab.run("exp-good").success  # the code location loads and the valid experiment runs
    result = lab.run("exp-bad", raise_on_error=False)
    assert f"{bad}: stage1.max_calls: " in result.failure_data_for_node("stage1_prompt").error.message

    code, out, err = run_cli(capsys, "status")
    assert (code, err) == (0, "")
    assert status_table(out) == {"exp-bad": ["invalid"] * 7, "exp-good": ["materialized"] * 7}
    assert f"exp-bad: invalid: {bad}: stage1.max_calls: " in out
    assert "exp-good: done" in out

    code, out, err = run_cli(capsys, "validate")
    assert code == 1
    assert f"{bad}: stage1.max_calls: " in out
    assert "1 of 2 experiment files and 0 of 0 campaign files are valid" in out
    bad.unlink()
    assert run_cli(capsys, "validate")[:2] == (
        0,
        "1 of 1 experiment files and 0 of 0 campaign files are valid\n",
    )
