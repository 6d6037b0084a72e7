"""Runs you can watch: per stage, progress lines in the run log (calls of max_calls, cost, best score or
examples done, ETA), no Dagster DEBUG event lines on the console, and a campaign's overall progress."""

import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lsl_dagster import graph
from lsl_dagster.cli import launch
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.method.progress import StageProgress, Ticker
from lsl_dagster.records import EvaluationResult, PromptCandidate
from lsl_dagster_tests.conftest import PROJECT, Lab

LINE = re.compile(
    r"progress (?P<stage>\w+): (?:(?P<done>\d+)/(?P<total>\d+) examples, )?(?P<calls>\d+)(?:/(?P<max>\d+))? "
    r"calls, \$(?P<cost>[\d.]+)(?: of \$(?P<allowance>[\d.]+))?(?:, best val score (?P<best>[\d.]+))?"
    r"(?:, ETA (?P<eta>\w+)|, (?P<outcome>done|failed) in \w+)(?P<simulated> \(simulated\))?$"
)


class Lines:
    """A log that tells a waiting test each line it receives."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._new = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._new:
            self.lines.append(line)
            self._new.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self._new:
            assert self._new.wait_for(lambda: len(self.lines) >= count, timeout=30), self.lines
            return list(self.lines)


def test_a_line_every_tenth_of_max_calls_with_cost_best_score_and_eta():
    meter = Meter("stage1", max_calls=40, cost_allowance_usd=1.0)
    progress = StageProgress()
    log = Lines()
    # A long interval: only the tenths of the work make lines here.
    ticker = Ticker("stage1", meter, progress, log, simulated=True, interval_s=3600)
    ticker.start()
    for n in range(1, 13):
        meter.reserve("m", 0.01)
        meter.settle("m", 0.01, ok=True, cost_usd=0.002)
        if n == 4:
            progress.offer_score(0.5)
            first = LINE.fullmatch(log.wait_for(1)[0])
        if n == 8:
            second = LINE.fullmatch(log.wait_for(2)[1])
    ticker.stop("done")
    last = LINE.fullmatch(log.wait_for(3)[-1])
    assert first and second and last, log.lines
    assert (int(first["calls"]), first["max"], first["allowance"]) == (4, "40", "1.0000")
    assert first["eta"] is not None and first["simulated"]
    assert int(second["calls"]) == 8 and float(second["cost"]) == pytest.approx(0.016)
    assert second["best"] == "0.500" and second["eta"] is not None
    assert (int(last["calls"]), last["outcome"], last["eta"]) == (12, "done", None)


def test_an_evaluation_tells_examples_done_of_the_total():
    meter = Meter("baseline_evaluation", max_calls=None, cost_allowance_usd=None)
    progress = StageProgress()
    progress.examples_total = 20
    log = Lines()
    ticker = Ticker("baseline_evaluation", meter, progress, log, simulated=False, interval_s=3600)
    ticker.start()
    for _ in range(2):
        meter.reserve("m", None)
        meter.settle("m", None, ok=True, cost_usd=0.0)
        progress.example_done()
    first = LINE.fullmatch(log.wait_for(1)[0])
    ticker.stop("failed")
    last = LINE.fullmatch(log.wait_for(2)[-1])
    assert first and last, log.lines
    assert (first["done"], first["total"], first["calls"], first["max"]) == ("2", "20", "2", None)
    assert first["eta"] is not None and not first["simulated"]
    assert (last["done"], last["outcome"]) == ("2", "failed")


def _progress(lab: Lab, run_id: str) -> dict[str, list[re.Match]]:
    by_stage: dict[str, list[re.Match]] = {}
    for record in lab.instance.all_logs(run_id):
        if record.user_message.startswith("progress "):
            match = LINE.fullmatch(record.user_message)
            assert match, record.user_message
            by_stage.setdefault(match["stage"], []).append(match)
    return by_stage


def test_a_materialization_logs_progress_within_max_calls_for_every_stage(lab: Lab):
    lab.write("watched")
    result = lab.run("watched")
    assert result.success
    lines = _progress(lab, result.run_id)
    assert set(lines) == {p.stage for p in graph.PROMPTS} | {a.evaluation for a in graph.ARMS}
    for prompt in graph.PROMPTS:
        ledger = PromptCandidate.model_validate(lab.output("watched", prompt.asset)).ledger
        stage = lines[prompt.stage]
        calls = [int(m["calls"]) for m in stage]
        assert calls == sorted(calls) and calls[-1] == ledger.budget_used
        assert all(int(m["max"]) == ledger.max_calls for m in stage)
        assert all(c <= ledger.max_calls for c in calls)
        assert stage[-1]["outcome"] == "done" and all(m["eta"] for m in stage[:-1])
        assert all(m["simulated"] for m in stage)
    for arm in graph.ARMS:
        evaluation = EvaluationResult.model_validate(lab.output("watched", arm.evaluation))
        stage = lines[arm.evaluation]
        done = [int(m["done"]) for m in stage]
        assert done == sorted(done) and done[-1] == evaluation.n == 40
        assert {m["total"] for m in stage} == {"40"} and stage[-1]["outcome"] == "done"
        assert int(stage[-1]["calls"]) == evaluation.ledger.budget_used


def test_the_demo_command_prints_progress_and_no_debug_event_lines(lab: Lab, tmp_path: Path):
    home = tmp_path / "demo_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")  # what `make demo` does
    lab.write("demo", stage1={"max_calls": 40}, evaluation={"limit": 20})
    command = lab.materialize_command("demo")
    command[command.index("group:lsl")] = "experiment_file,stage1_prompt,baseline_evaluation"
    env = lab.env(DAGSTER_HOME=str(home))
    quiet = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    output = (quiet.stdout + quiet.stderr).splitlines()
    assert [line for line in output if " - DEBUG - " in line] == []
    finals = [line for line in output if re.search(r"progress \w+: .* done in ", line)]
    assert [re.search(r"progress (\w+):", line)[1] for line in finals] == ["stage1", "baseline_evaluation"]

    # The README's way to see them again.
    loud = subprocess.run(
        [*command, "--config-json", '{"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert loud.returncode == 0, loud.stderr[-3000:]
    events = [line for line in (loud.stdout + loud.stderr).splitlines() if " - DEBUG - " in line]
    assert any(" - STEP_START - " in line for line in events) and len(events) > 20


def test_a_campaign_launch_says_how_far_it_is(monkeypatch: pytest.MonkeyPatch):
    def execute(job: str, partition: str, assets: list[str], tags: dict[str, str]) -> tuple[str, bool]:
        return f"run-{partition}", partition != "e2"

    monkeypatch.setattr(launch, "_execute", execute)
    said: list[str] = []
    todo = {"e1": ["comparison"], "e2": ["comparison"], "e3": ["comparison"]}
    with ThreadPoolExecutor(1) as pool:
        outcomes = launch.run_experiments(pool, todo, {}, said.append, lambda: "12 calls, $0.0100 so far")
    assert {o.experiment_id: o.success for o in outcomes} == {"e1": True, "e2": False, "e3": True}
    # After each run's own line (runs ending at once share one), the whole launch's.
    assert sorted(line.split(":")[0] for line in said if not line.startswith("campaign")) == [
        "1/3 e1",
        "2/3 e2",
        "3/3 e3",
    ]
    overall = [line for line in said if line.startswith("campaign progress: ")]
    ended = [sum(map(int, re.findall(r"(\d+) (?:done|failed)", line))) for line in overall]
    assert ended == sorted(ended) and said[-1] == overall[-1]
    assert overall[-1] == (
        "campaign progress: 2 done, 0 running, 1 failed, 0 waiting of 3; 12 calls, $0.0100 so far"
    )
