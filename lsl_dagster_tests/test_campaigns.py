"""Campaigns: grid expansion with clear errors that spoil only their campaign; a campaign run that
survives a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from lsl_dagster.cli import main
from lsl_dagster.experiments import campaigns, experiment_ids, load_experiment, scan_campaigns
from lsl_dagster.sim_server import SimServer
from lsl_dagster_tests.conftest import FAST, PROJECT, Lab, shipped_keys

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
    assert len(specs) == 12 == len(campaign.tasks) * len(campaign.model_pairs) * len(campaign.seeds)
    spec = specs["grid-sim-01--word_sort--large-tiny--miprov2--s2"]
    assert (spec.task, spec.small_model.model, spec.seed, spec.stage1.optimizer) == (
        "word_sort",
        "sim/tiny",
        2,
        "miprov2",
    )
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
    failure = result.failure_data_for_node("campaign_summary")
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
        while len(_comparisons(instance, ids)) < 2:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGKILL)  # the launcher and its workers, in the middle of runs
        first.wait()
        done_before = _comparisons(instance, ids)
        assert 2 <= len(done_before) < len(ids)

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr
        max_in_flight = server.stats()["max_in_flight"]

    done = _comparisons(instance, ids)
    assert set(done) == set(ids)
    assert all(done[e] == 1 for e in done_before)  # what was finished was not run again
    assert max_in_flight <= 2 * 3
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
