"""Campaigns: grid expansion with clear errors that spoil only their campaign; a campaign run that
survives a kill."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    DagsterInstance,
    Definitions,
    define_asset_job,
)
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from lsl_dagster.cli import main
from lsl_dagster.defs.assets import POOL
from lsl_dagster.defs.campaign_assets import CAMPAIGN_GROUP
from lsl_dagster.method.evaluation import scores
from lsl_dagster.records import CampaignSummary, Comparison, TransferMatrix
from lsl_dagster.results.stats import CLUSTER_METHOD, cluster_bootstrap
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment import SIMULATED as LABEL
from lsl_dagster.spec.experiment_files import campaigns, experiment_ids, load_experiment, scan_campaigns
from lsl_dagster_tests.conftest import FAST, PROJECT, STAGE_ASSETS, Lab, shipped_keys

PAIRS = [
    {"name": "l-s", "large_model": {"model": "sim/large"}, "small_model": {"model": "sim/small"}},
    {"name": "l-t", "large_model": {"model": "sim/large"}, "small_model": {"model": "sim/tiny"}},
]


def _write(lab: Lab, name: str, **overrides) -> Path:
    path = lab.data_dir / "campaigns" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    campaign = {"campaign": name, "tasks": ["arithmetic"], "model_pairs": PAIRS, "seeds": [0, 1], **overrides}
    path.write_text(yaml.safe_dump(campaign))
    return path


def test_the_shipped_campaign_expands_into_readable_experiment_ids():
    ((campaign, specs),) = [v for k, v in campaigns(PROJECT / "data").items() if k == "grid-sim-01"]
    assert len(specs) == 16 == len(campaign.tasks) * len(campaign.model_pairs) * len(campaign.seeds)
    spec = specs["grid-sim-01--word_sort--medium-tiny--miprov2--s1"]
    assert (spec.task, spec.large_model.model, spec.small_model.model, spec.seed, spec.stage1.optimizer) == (
        "word_sort",
        "sim/medium",
        "sim/tiny",
        1,
        "miprov2",
    )
    # A transfer matrix of at least two large by two small models.
    larges = {p.large_model.model for p in campaign.model_pairs}
    smalls = {p.small_model.model for p in campaign.model_pairs}
    assert len(larges) >= 2 and len(smalls) >= 2
    assert {(p.large_model.model, p.small_model.model) for p in campaign.model_pairs} == {
        (large, small) for large in larges for small in smalls
    }
    assert spec.stage1.max_calls == 120  # the shared settings reach every cell
    assert set(specs) <= set(experiment_ids(PROJECT / "data"))


def test_campaign_cells_are_experiments_like_any_other(lab: Lab):
    _write(lab, "grid", experiment={"evaluation": {"limit": 25}})
    ids = experiment_ids(lab.data_dir)
    assert ids == sorted(f"grid--arithmetic--{p}--miprov2--s{s}" for p in ("l-s", "l-t") for s in (0, 1))
    spec = load_experiment(lab.data_dir, ids[0])
    assert spec.evaluation.limit == 25 and spec.small_model.model == "sim/small"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tasks": ["arithmetic", "nope"]}, "unknown task 'nope'"),
        ({"model_pairs": [PAIRS[0], PAIRS[0]]}, "two cells expand to the same experiment id"),
        (
            {"model_pairs": [{**PAIRS[0], "small_model": {"model": "sim/huge"}}]},
            "unknown sim model 'sim/huge'",
        ),
        ({"experiment": {"stage1": {"max_calls": 1}}}, "stage1.max_calls"),
        ({"seeds": []}, "seeds"),
        ({"campaign": "other"}, "does not match the file name"),
    ],
)
def test_invalid_campaigns_spoil_only_themselves(lab: Lab, overrides: dict, message: str):
    _write(lab, "good")
    path = _write(lab, "bad", **overrides)
    valid, errors = scan_campaigns(lab.data_dir)
    assert list(valid) == ["good"] and list(errors) == ["bad"]
    assert str(path) in errors["bad"] and message in errors["bad"]
    # The good campaign's experiments are there, none of the bad one's.
    assert experiment_ids(lab.data_dir) == sorted(valid["good"][1])


def test_an_invalid_campaign_fails_its_own_partition_and_nothing_else(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    _write(lab, "good", experiment=FAST | {"seed": 0}, seeds=[0], model_pairs=PAIRS[:1])
    path = _write(lab, "bad", tasks=["nope"])
    defs = lab.defs()  # the code location loads
    result = defs.resolve_job_def("lsl_campaign").execute_in_process(
        partition_key="bad", instance=lab.instance, raise_on_error=False
    )
    for asset in ("campaign_summary", "transfer_matrix"):
        failure = result.failure_data_for_node(asset)
        assert f"{path}: unknown task 'nope'" in failure.error.message
    # `lsl validate` names the file and the problem, and fails; `lsl campaign run bad` refuses clearly.
    monkeypatch.setenv("DAGSTER_HOME", lab.instance.root_directory)
    monkeypatch.setenv("LSL_DATA_DIR", str(lab.data_dir))
    monkeypatch.setenv("LSL_RUNS_DIR", str(lab.runs_dir))
    capsys.readouterr()
    assert main(["validate"]) == 1
    out = capsys.readouterr().out
    assert f"{path}: unknown task 'nope'" in out
    assert "0 of 0 experiment files and 1 of 2 campaign files are valid" in out
    assert main(["campaign", "run", "bad"]) == 2
    assert "campaign bad is invalid: " in capsys.readouterr().err


def test_a_campaign_may_not_reuse_an_experiment_id(lab: Lab):
    lab.write("grid--arithmetic--l-s--miprov2--s0")
    _write(lab, "grid")
    _, errors = scan_campaigns(lab.data_dir)
    assert "reuses the experiment id" in errors["grid"]
    assert experiment_ids(lab.data_dir) == ["grid--arithmetic--l-s--miprov2--s0"]


def _comparisons(instance: DagsterInstance, ids: list[str]) -> dict[str, int]:
    filter_ = AssetRecordsFilter(asset_key=AssetKey("comparison"), asset_partitions=ids)
    records = instance.fetch_materializations(filter_, limit=1000).records
    return {
        e: sum(r.partition_key == e for r in records)
        for e in ids
        if any(r.partition_key == e for r in records)
    }


LLM_STEPS = set(STAGE_ASSETS) - {"comparison"}  # the stages that call models, in the lsl_llm pool


def _most_llm_steps_at_once(instance: DagsterInstance, killed_at: float) -> tuple[int, list[str]]:
    """The most steps of the lsl_llm pool holding a slot at one time, across all runs, from a step's
    "lsl_llm slot k of n taken" line to its "released" line (logged while the slot is still held) or the
    kill; and those steps (run, step, start, end), to show which overlapped. Every LLM step that succeeded
    must have held a slot."""
    intervals: list[tuple[float, float, str]] = []
    held = 0
    for record in instance.get_run_records():
        run_id = record.dagster_run.run_id
        started: dict[str, float] = {}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if entry.step_key not in LLM_STEPS:
                continue
            name = f"{run_id[:8]} {entry.step_key}"
            line = re.fullmatch(rf"{POOL} slot \d+ of \d+ (taken|released)", entry.user_message or "")
            if event is None and line and line[1] == "taken":
                started[entry.step_key] = entry.timestamp
            elif event is None and line:
                intervals.append((started.pop(entry.step_key), entry.timestamp, name))
            elif event is not None and event.event_type_value == "STEP_SUCCESS":
                assert any(i[2] == name for i in intervals), f"{name} succeeded without a slot"
                held += 1
        intervals += [(start, killed_at, f"{run_id[:8]} {step} (killed)") for step, start in started.items()]
    assert held > 0  # the measure saw the steps it bounds
    most, peak = 0, []
    for start, _, _ in intervals:  # the most steps running at a step's start: a step ending then is done
        running = [i for i in intervals if i[0] <= start < i[1]]
        if len(running) > most:
            most, peak = len(running), [f"{name} {a:.3f}-{b:.3f}" for a, b, name in running]
    return most, peak


def test_campaign_run_survives_a_kill_and_matches_its_experiments(tmp_path: Path, lab: Lab):
    home = tmp_path / "home"
    home.mkdir()
    # Four experiments at once on SQLite; at most 2 LLM steps at a time (the pool), 3 calls each.
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(
            {
                "telemetry": {"enabled": False},
                "concurrency": {"runs": {"max_concurrent_runs": 4}, "pools": {"default_limit": 2}},
            }
        )
    )
    with SimServer(latency_s=0.01, answer_keys=shipped_keys()).start() as server:
        http = {"api_base": server.url, "max_concurrency": 3}
        pairs = [
            {
                "name": "l-s",
                "large_model": {"model": "openai/sim-large", **http},
                "small_model": {"model": "openai/sim-small", **http},
            },
            {
                "name": "l-t",
                "large_model": {"model": "openai/sim-large", **http},
                "small_model": {"model": "openai/sim-tiny", **http},
            },
        ]
        shared = {k: v for k, v in FAST.items() if k not in ("task", "large_model", "small_model", "seed")}
        _write(lab, "grid", model_pairs=pairs, experiment=shared)
        ids = experiment_ids(lab.data_dir)
        env = lab.env(DAGSTER_HOME=str(home))
        command = [str(Path(sys.executable).with_name("lsl")), "campaign", "run", "grid"]

        first = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        instance = DagsterInstance.from_config(str(home))
        deadline = time.monotonic() + 300
        while not _comparisons(instance, ids):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # Experiments finish close together: hold the provider so the others stay mid-way until the kill.
        server.freeze()
        os.killpg(first.pid, signal.SIGKILL)  # the launcher and its workers, in the middle of runs
        killed_at = time.time()
        first.wait()
        server.release()
        done_before = _comparisons(instance, ids)
        assert 1 <= len(done_before) < len(ids)

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr
        max_in_flight = server.stats()["max_in_flight"]

    done = _comparisons(instance, ids)
    assert set(done) == set(ids)
    assert all(done[e] == 1 for e in done_before)  # what was finished was not run again
    # The pool held across the launches: at most 2 LLM steps at once; each step sends at most 3 requests
    # at a time to each model (Stage 2 may have the small model's and the reflecting large model's).
    most, steps = _most_llm_steps_at_once(instance, killed_at)
    assert most <= 2, f"{most} LLM steps at once: {steps}"
    assert max_in_flight <= 2 * 3 * 2
    runs = instance.get_run_records()
    assert not any(
        "database is locked" in (r.dagster_run.tags.get("dagster/failure_reason") or "") for r in runs
    )

    summary_path = Path(
        next(
            line.split("summary in ")[1].split(",")[0]
            for line in second.stdout.splitlines()
            if "summary in" in line
        )
    )
    summary = json.loads(summary_path.read_text())
    assert summary["plot_path"] == "grid/campaign_summary.png"  # relative to the runs directory
    assert (lab.runs_dir / summary["plot_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same launch produced the transfer matrix (one large x two small models); the command shows it.
    heat_map = Path(second.stdout.split("heat map in ")[1].split()[0])
    assert heat_map == lab.runs_dir / "grid" / "transfer_matrix.png"
    assert heat_map.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "transfer matrix of campaign grid" in second.stdout
    header = next(line for line in second.stdout.splitlines() if line.startswith("lsl - budget_matched"))
    assert header.split()[3:] == ["openai/sim-small", "openai/sim-tiny"]
    for cell in summary["cells"]:
        experiments = [
            json.loads((lab.runs_dir / e / "comparison.json").read_text()) for e in cell["experiments"]
        ]
        assert len(experiments) == 2
        for arm, interval in cell["arms"].items():
            scores = [next(a["score"] for a in c["arms"] if a["arm"] == arm) for c in experiments]
            assert interval["mean"] == pytest.approx(sum(scores) / 2)
        lsl = [
            next(d["diff"] for d in c["differences"] if (d["arm"], d["baseline"]) == ("lsl", "baseline"))
            for c in experiments
        ]
        assert cell["differences"]["lsl - baseline"]["mean"] == pytest.approx(sum(lsl) / 2)


def _shipped_pairs() -> list[dict]:
    ((campaign, _),) = [v for k, v in campaigns(PROJECT / "data").items() if k == "grid-sim-01"]
    return [pair.model_dump(exclude_defaults=True) for pair in campaign.model_pairs]


# Tiny budgets: the matrix needs many experiments, not good ones.
TINY = {
    "stage1": {"max_calls": 30},
    # With 4 dev examples sim/small scores 0 on all of them for some seeds: the campaign is tested here.
    "stage2": {"max_calls": 24, "on_no_signal": "warn"},
    "data": {"train": 6, "val": 4},
    "evaluation": {"split": "test", "limit": 16},
}


def test_transfer_matrix_of_the_shipped_pairs_is_produced_plotted_and_shown(
    lab: Lab, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    _write(lab, "mx", model_pairs=_shipped_pairs(), seeds=[0, 1], experiment=TINY)
    ids = experiment_ids(lab.data_dir)
    assert len(ids) == 8
    for experiment in ids:
        assert lab.run(experiment).success
    defs = lab.defs()
    # The campaign group as the UI materializes it: one partition (the campaign) of both campaign assets.
    job = define_asset_job("campaign", selection=AssetSelection.groups(CAMPAIGN_GROUP))
    campaign_defs = Definitions(assets=list(defs.assets), resources=defs.resources, jobs=[job])
    result = campaign_defs.resolve_job_def("campaign").execute_in_process(
        partition_key="mx", instance=lab.instance
    )
    assert result.success

    matrix = TransferMatrix.model_validate(lab.output("mx", "transfer_matrix"))
    comparisons = {e: Comparison.model_validate(lab.output(e, "comparison")) for e in ids}
    assert matrix.method == CLUSTER_METHOD
    assert matrix.large_models == ["sim/large", "sim/medium"]
    assert matrix.small_models == ["sim/small", "sim/tiny"]
    assert len(matrix.cells) == 4 and matrix.simulated
    raw, adjusted = [], []
    for cell in matrix.cells:
        pair = (cell.large_model, cell.small_model)
        mine = [c for c in comparisons.values() if (c.large_model, c.small_model) == pair]
        assert sorted(cell.experiments) == sorted(c.experiment_id for c in mine) and len(mine) == 2
        for name in ("lsl - baseline", "lsl - budget_matched"):
            paired = [next(d for d in c.differences if f"{d.arm} - {d.baseline}" == name) for c in mine]
            diffs = [d.diff for d in paired]
            value = cell.differences[name]
            # Pooled over both experiments' paired examples, read from their predictions, each a cluster.
            arm, baseline = name.split(" - ")
            clusters = []
            for c in mine:
                rows = {a.arm: scores(lab.runs_dir / a.predictions_path) for a in c.arms}
                clusters.append([rows[arm][i] - rows[baseline][i] for i in sorted(rows[baseline])])
            pooled = cluster_bootstrap(clusters)
            assert (value.mean, value.ci_low, value.ci_high, value.p_value) == pytest.approx(pooled)
            assert value.mean == pytest.approx(sum(diffs) / 2)
            assert (value.n, value.n_examples) == (2, sum(d.n for d in paired))
            assert -1.0 <= value.ci_low <= value.mean <= value.ci_high <= 1.0
            if diffs[0] != diffs[1]:  # narrower than the df = 1 t-interval over the two experiments
                t_low, t_high = sps.t.interval(0.95, 1, loc=np.mean(diffs), scale=sps.sem(diffs))
                assert value.ci_high - value.ci_low < t_high - t_low
            raw.append(value.p_value)
            adjusted.append(value.p_holm)
    # Holm over every cell and difference of the matrix, beside the raw p-values.
    present = [i for i, p in enumerate(raw) if p is not None]
    assert present
    want = multipletests([raw[i] for i in present], method="holm")[1]
    assert [adjusted[i] for i in present] == pytest.approx(list(want))

    metadata = lab.metadata("mx", "transfer_matrix")
    assert matrix.plot_path == metadata["plot"] == "mx/transfer_matrix.png"  # relative to the runs dir
    assert (lab.runs_dir / metadata["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| large \\ small | sim/small | sim/tiny |" in metadata["matrix"]
    assert "Holm p=" in metadata["matrix"] and LABEL in metadata["matrix"]
    summary = lab.metadata("mx", "campaign_summary")
    assert "Holm p=" in summary["cells"].records[0].data["lsl - baseline"]

    for name, value in lab.env().items():
        if name in ("DAGSTER_HOME", "LSL_DATA_DIR", "LSL_RUNS_DIR"):
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["campaign", "matrix", "mx"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("lsl - baseline"))
    assert header.split() == ["lsl", "-", "baseline", "sim/small", "sim/tiny"]
    large_row = lines[lines.index(header) + 1]
    cell = matrix.cell("sim/large", "sim/small").differences["lsl - baseline"]
    assert large_row.startswith("sim/large") and f"{cell.mean:+.3f}" in large_row
    assert f"heat map in {lab.runs_dir / matrix.plot_path}" in out and LABEL in out


def test_matrix_view_of_an_unrun_campaign_says_what_to_do(
    lab: Lab, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    _write(lab, "idle")
    for name, value in lab.env().items():
        if name in ("DAGSTER_HOME", "LSL_DATA_DIR", "LSL_RUNS_DIR"):
            monkeypatch.setenv(name, value)
    assert main(["campaign", "matrix", "idle"]) == 2
    assert "run `lsl campaign run idle` first" in capsys.readouterr().err
    assert main(["campaign", "matrix", "nope"]) == 2
    assert "unknown campaign 'nope'" in capsys.readouterr().err


def test_the_shipped_campaign_runs_to_its_table_and_says_which_cells_had_no_signal(
    lab: Lab, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """`make campaign` as a newcomer runs it: every cell to a comparison, even those whose small model
    scored 0 on every probe example, which the results flag instead of hiding."""
    (lab.data_dir / "campaigns").mkdir()
    shutil.copy(PROJECT / "data" / "campaigns" / "grid-sim-01.yaml", lab.data_dir / "campaigns")
    for name, value in lab.env().items():
        if name in ("DAGSTER_HOME", "LSL_DATA_DIR", "LSL_RUNS_DIR"):
            monkeypatch.setenv(name, value)
    assert main(["campaign", "run", "grid-sim-01"]) == 0
    table = capsys.readouterr().out
    ids = experiment_ids(lab.data_dir)
    assert len(ids) == 16
    # Two seeds per cell, pooled over their examples: every interval inside the metric's range, and the
    # table says how it was made.
    assert f"intervals: {CLUSTER_METHOD}" in table
    summary = CampaignSummary.model_validate(lab.output("grid-sim-01", "campaign_summary"))
    assert len(summary.cells) == 8
    for cell in summary.cells:
        for value in [*cell.arms.values(), *cell.differences.values()]:
            assert value.ci_low is not None and value.ci_high is not None
            assert -1.0 <= value.ci_low <= value.mean <= value.ci_high <= 1.0
            assert value.n == 2 and value.n_examples and value.n_examples >= 2 * 100
    comparisons = {e: Comparison.model_validate(lab.output(e, "comparison")) for e in ids}
    silent = sorted(e for e, c in comparisons.items() if c.stage2_signal and c.stage2_signal.no_signal)
    assert silent, "no cell of the shipped campaign ran past Stage 2's no-signal probe"
    assert (lab.runs_dir / "grid-sim-01" / "transfer_matrix.json").is_file()
    capsys.readouterr()
    assert main(["results", *silent]) == 0
    out = capsys.readouterr().out
    assert out.count("WARNING stage2: no signal for Stage 2") == len(silent)
