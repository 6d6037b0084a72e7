"""`lsl` over a real Dagster instance: status, results, export and plot read what the runs recorded."""

import csv
import json
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lsl_dagster.cli import COLUMNS, arm_cis, main
from lsl_dagster.models import Comparison
from lsl_dagster_tests.conftest import Lab

STAGES = [
    "stage1_prompt",
    "stage2_hardened_prompt",
    "budget_matched_prompt",
    "baseline_evaluation",
    "stage3_evaluation",
    "budget_matched_evaluation",
    "comparison",
]


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
                **{k: arm[k] for k in ("n_provider_failures", "format_warning")},
                "stage2_unchanged": comparison["stage2_unchanged"],
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
    cis = arm_cis(lab.instance, Comparison.model_validate(comparison))
    for arm in comparison["arms"]:
        low, high = cis[arm["arm"]]
        assert low < arm["score"] < high, (arm, low, high)

    # Editing exp-part's file: `lsl status` observes it, and Dagster then reports its stage 1 as stale.
    path = lab.data_dir / "experiments" / "exp-part.yaml"
    path.write_text(path.read_text().replace("seed: 0", "seed: 1"))
    code, out, _ = run_cli(capsys, "status")
    assert code == 0
    table = status_table(out)
    assert table["exp-part"] == ["stale"] + ["missing"] * 6
    assert table["exp-full"] == ["materialized"] * 7
    assert "exp-part: next: stage1_prompt (stale) - its file changed since it was last observed" in out
    # The observation was recorded: still stale, no longer "changed since it was last observed".
    code, out, _ = run_cli(capsys, "status", "exp-part")
    assert status_table(out) == {"exp-part": ["stale"] + ["missing"] * 6}
    assert "last observed" not in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_status_shows_the_stage_that_failed(cli_env: Lab, capsys: pytest.CaptureFixture):
    lab = cli_env
    # The small model's server is down: stage 1 and the baseline evaluation (large model) succeed,
    # stage 2 fails, and the steps after it never run.
    lab.write(
        "exp-down",
        small_model={"model": "openai/sim-small", "api_base": f"http://127.0.0.1:{_free_port()}/v1"},
    )
    assert not lab.run("exp-down", raise_on_error=False, num_retries=0).success

    code, out, err = run_cli(capsys, "status", "exp-down")
    assert (code, err) == (0, "")
    statuses = dict(zip(STAGES, status_table(out)["exp-down"], strict=True))
    assert statuses == {
        "stage1_prompt": "materialized",
        "stage2_hardened_prompt": "failed",
        "budget_matched_prompt": "missing",
        "baseline_evaluation": "materialized",
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
