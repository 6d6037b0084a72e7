"""The Dagster UI in a real browser: Playwright driving Debian's Chromium (`/usr/bin/chromium`, never a
downloaded browser) against `dagster dev` on a free port, with a throwaway instance and data directory.

Each step takes a screenshot into test-artifacts/browser/ (git-ignored); a step that fails says which
screen it was on and leaves a screenshot of it. A browser that cannot start fails these tests.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter
from playwright.sync_api import Browser, Page, sync_playwright

from lsl_dagster_tests.conftest import FAST, PROJECT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = PROJECT / "test-artifacts" / "browser"
EXPERIMENT = "ui-exp"
CAMPAIGN = "ui-grid"
CAMPAIGN_IDS = [f"{CAMPAIGN}--arithmetic--l-s--miprov2--s{seed}" for seed in (0, 1)]
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@dataclass
class Dagit:
    url: str
    home: Path
    runs_dir: Path

    def instance(self) -> DagsterInstance:
        return DagsterInstance.from_config(str(self.home))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dagit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dagit]:
    """`dagster dev` (webserver and daemon) over a data dir with one experiment and a 2-seed campaign."""
    root = tmp_path_factory.mktemp("ui")
    data = root / "data"
    shutil.copytree(PROJECT / "data" / "tasks", data / "tasks")
    (data / "experiments").mkdir()
    (data / "campaigns").mkdir()
    (data / "experiments" / f"{EXPERIMENT}.yaml").write_text(
        yaml.safe_dump({"experiment_id": EXPERIMENT, **FAST})
    )
    shared = {k: v for k, v in FAST.items() if k not in ("task", "large_model", "small_model", "seed")}
    pair = {"name": "l-s", "large_model": {"model": "sim/large"}, "small_model": {"model": "sim/small"}}
    campaign = {"campaign": CAMPAIGN, "tasks": ["arithmetic"], "model_pairs": [pair], "seeds": [0, 1]}
    (data / "campaigns" / f"{CAMPAIGN}.yaml").write_text(yaml.safe_dump({**campaign, "experiment": shared}))
    home = root / "home"
    home.mkdir()
    # nux off: no first-visit "join the community" dialog over the page.
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"telemetry": {"enabled": False}, "nux": {"enabled": False}})
    )
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LSL_DATA_DIR": str(data),
        "LSL_RUNS_DIR": str(root / "runs"),
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    command = [dagster, "dev", "-m", "lsl_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)]
    with (root / "dagster-dev.log").open("w") as log:
        process = subprocess.Popen(command, env=env, cwd=root, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (root / "dagster-dev.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "dagster dev did not serve within 180 s"
                time.sleep(1)
        yield Dagit(url, home, root / "runs")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:  # a missing or broken browser fails the UI tests, never skips them
            pytest.fail(f"Chromium did not start from {CHROMIUM} (apt-get install chromium): {exc}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


class Screens:
    """Names each step's screen: a screenshot after it, and on failure the screen and URL it was on."""

    def __init__(self, page: Page, test: str):
        self.page, self.test, self.count = page, test, 0

    @contextmanager
    def on(self, screen: str) -> Iterator[Page]:
        self.count += 1
        name = re.sub(r"[^a-z0-9]+", "_", screen.lower()).strip("_")
        shot = ARTIFACTS / f"{self.test}-{self.count:02d}-{name}.png"
        try:
            yield self.page
        except Exception as exc:
            failed = shot.with_suffix(".FAILED.png")
            self.page.screenshot(path=str(failed), full_page=True)
            raise AssertionError(
                f"on the screen '{screen}' ({self.page.url}), screenshot {failed}: {exc}"
            ) from exc
        self.page.screenshot(path=str(shot), full_page=True)


def _wait_for_runs(dagit: Dagit, partitions: list[str], timeout_s: float) -> list:
    """The runs of these partitions once each has one that finished."""
    deadline = time.monotonic() + timeout_s
    with dagit.instance() as instance:
        while True:
            runs = {
                p: instance.get_run_records(RunsFilter(tags={"dagster/partition": p})) for p in partitions
            }
            if all(r and r[0].dagster_run.status in FINISHED for r in runs.values()):
                return [runs[p][0].dagster_run for p in partitions]
            assert time.monotonic() < deadline, f"runs of {partitions} did not finish in {timeout_s} s"
            time.sleep(2)


def _lineage_of_lsl(screens: Screens, dagit: Dagit) -> Page:
    with screens.on("lineage of the lsl group") as page:
        page.goto(f'{dagit.url}/asset-groups~group%3A"lsl"')
        for asset in ("experiment_file", "stage1_prompt", "stage3_evaluation", "comparison"):
            page.get_by_text(asset, exact=True).first.wait_for()
    return page


def _pick_partitions(screens: Screens, page: Page, typed: str, option: str) -> None:
    with screens.on("launch dialog"):
        page.get_by_role("button", name="Materialize all").first.click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Select a partition or create one").click()
        page.keyboard.type(typed)
        page.get_by_role("menuitem", name=option).click()
        page.keyboard.press("Escape")


def test_materialize_an_experiment_from_the_lineage_graph_and_read_its_arms(dagit: Dagit, page: Page):
    screens = Screens(page, "experiment")
    page = _lineage_of_lsl(screens, dagit)
    _pick_partitions(screens, page, EXPERIMENT, EXPERIMENT)
    with screens.on("launch dialog, one partition picked"):
        page.get_by_role("dialog").get_by_role("button", name="Launch 1 run").click()
        page.get_by_role("dialog").wait_for(state="hidden")
    (run,) = _wait_for_runs(dagit, [EXPERIMENT], timeout_s=300)
    assert run.status == DagsterRunStatus.SUCCESS
    assert run.tags.get("dagster/from_ui") == "true"
    with screens.on("run page"):
        page.goto(f"{dagit.url}/runs/{run.run_id}")
        page.get_by_text("Success", exact=True).first.wait_for()

    comparison = json.loads((dagit.runs_dir / EXPERIMENT / "comparison.json").read_text())
    with screens.on("comparison asset, arms table"):
        page.goto(f"{dagit.url}/assets/comparison?partition={EXPERIMENT}")
        page.get_by_text("evaluation_cost_usd", exact=True).first.wait_for()
        # The arms table is nested in the metadata table: the innermost table with its column.
        table = page.locator("table").filter(has_text="evaluation_cost_usd").last
        rows = [
            [cell.strip() for cell in row.split("\t")] for row in table.get_by_role("row").all_inner_texts()
        ]
    assert rows[0][:3] == ["arm", "score", "n"]
    shown = {row[0]: (float(row[1]), int(row[2])) for row in rows[1:]}
    assert shown == {a["arm"]: (round(a["score"], 4), a["n"]) for a in comparison["arms"]}
    assert list(shown) == ["baseline", "lsl", "budget_matched"]


def test_launch_a_campaign_backfill_from_the_ui(dagit: Dagit, page: Page):
    screens = Screens(page, "campaign")
    page = _lineage_of_lsl(screens, dagit)
    _pick_partitions(screens, page, CAMPAIGN, f"Select all ({len(CAMPAIGN_IDS)})")
    with screens.on("launch dialog, the campaign's experiments picked"):
        dialog = page.get_by_role("dialog")
        dialog.get_by_text(f"{len(CAMPAIGN_IDS)} partitions").wait_for()
        dialog.get_by_role("button", name="Launch backfill").click()
        dialog.wait_for(state="hidden")
    # The backfill daemon of `dagster dev` turns the backfill into runs on its 30 s ticks.
    runs = _wait_for_runs(dagit, CAMPAIGN_IDS, timeout_s=420)
    assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS] * len(CAMPAIGN_IDS)
    backfills = {r.tags.get("dagster/backfill") for r in runs}
    assert len(backfills) == 1 and None not in backfills  # one unit: every run belongs to the backfill
    with screens.on("backfill page"):
        page.goto(f"{dagit.url}/runs/b/{backfills.pop()}")
        for experiment_id in CAMPAIGN_IDS:
            page.get_by_text(experiment_id).first.wait_for()
    with dagit.instance() as instance:
        for experiment_id in CAMPAIGN_IDS:
            filter_ = AssetRecordsFilter(AssetKey("comparison"), asset_partitions=[experiment_id])
            assert len(instance.fetch_materializations(filter_, limit=5).records) == 1
