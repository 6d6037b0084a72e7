"""Shared by the benchmarks: machine and version info, medians, tables, a throwaway lab, timed commands."""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# The CLIs installed next to the interpreter running the benchmark (.venv/bin after `make setup`).
BIN = Path(sys.executable).parent


def freeze_imports() -> None:
    """Do what the code location does once loaded (lsl_dagster/definitions.py): what the process has
    imported lives as long as it does, so it is frozen out of the garbage collector's full scans. A
    benchmark calling the stages directly then measures them as they run in a Dagster step."""
    gc.freeze()


def parser(description: str, repeat: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--repeat", type=int, default=repeat, help=f"runs per measurement (median; default {repeat})"
    )
    p.add_argument("--quick", action="store_true", help="a smaller smoke-check version (about a minute)")
    return p


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_head() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    # Uncommitted changes to the product code mean the numbers are not those of HEAD alone.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "lsl_dagster", "pyproject.toml")
    return head + ("+dirty" if dirty else "")


def environment() -> str:
    versions = {name: importlib.metadata.version(name) for name in ("dagster", "dspy", "lsl_dagster")}
    return "\n".join(
        [
            f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, {_ram_gib()} RAM, {platform.system()} "
            f"{platform.release()}",
            f"versions: python {platform.python_version()}, "
            + ", ".join(f"{k} {v}" for k, v in versions.items())
            + f" (git {_git_head()})",
            f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}, load average "
            + "/".join(f"{load:.2f}" for load in os.getloadavg())
            + " (1/5/15 min; other work on the machine skews times)",
        ]
    )


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """The median, and the range (min-max) when the runs differed."""
    low, mid, high = fmt.format(min(values)), fmt.format(median(values)), fmt.format(max(values))
    return mid if low == high else f"{mid} ({low}-{high})"


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> None:
    cells = [list(map(str, header)), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = "  ".join
    print(f"\n## {title}\n")
    print(environment() + "\n")
    print(line(f"{c:<{w}}" for c, w in zip(cells[0], widths, strict=True)).rstrip())
    print(line("-" * w for w in widths))
    for row in cells[1:]:
        print(line(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip())
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()


@dataclass
class Lab:
    """A throwaway data dir (the shipped tasks plus the experiments written here), runs dir and Dagster
    home (the repo's dagster.yaml), so each measurement starts from nothing."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "LSL_DATA_DIR": str(self.data_dir),
            "LSL_RUNS_DIR": str(self.runs_dir),
        }

    def write_experiment(self, experiment_id: str, spec: Mapping[str, Any]) -> None:
        path = self.data_dir / "experiments" / f"{experiment_id}.yaml"
        path.write_text(yaml.safe_dump({**spec, "experiment_id": experiment_id}, sort_keys=False))

    def write_campaign(self, name: str, campaign: Mapping[str, Any]) -> None:
        path = self.data_dir / "campaigns" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump({**campaign, "campaign": name}, sort_keys=False))

    def calls(self, experiment_id: str) -> list[dict[str, Any]]:
        """The requests the experiment's call log records (stage-completion events left out)."""
        path = self.runs_dir / experiment_id / "calls.jsonl"
        return [r for r in map(json.loads, path.read_text().splitlines()) if "event" not in r]


def make_lab(root: Path) -> Lab:
    lab = Lab(root)
    shutil.copytree(REPO / "data" / "tasks", lab.data_dir / "tasks")
    (lab.data_dir / "experiments").mkdir()
    lab.home.mkdir()
    shutil.copy(REPO / "dagster.yaml", lab.home / "dagster.yaml")
    return lab


def shipped_experiment(name: str = "arith-sim-01") -> dict[str, Any]:
    return yaml.safe_load((REPO / "data" / "experiments" / f"{name}.yaml").read_text())


def call_signature(records: Iterable[Mapping[str, Any]]) -> Counter[tuple[Any, ...]]:
    """What was asked of the providers, independent of timing: (stage, model, ok, tokens in, tokens out)."""
    return Counter((r["stage"], r["model"], r["ok"], r["input_tokens"], r["output_tokens"]) for r in records)


def run(
    command: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 1800
) -> tuple[float, str]:
    """Run a command to completion; (wall seconds, stdout). A failure shows the command's output."""
    start = time.perf_counter()
    done = subprocess.run(list(command), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"benchmark step failed ({done.returncode}): {' '.join(command)}")
    return wall, done.stdout


def materialize(
    experiment_id: str,
    select: str = "group:lsl",
    module: str = "lsl_dagster.definitions",
    working_directory: Path | None = None,
) -> list[str]:
    """`dagster asset materialize` of one partition; a module outside the package needs its directory."""
    where = ("-d", str(working_directory)) if working_directory else ()
    return [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        *where,
        *("-m", module, "--select", select, "--partition", experiment_id),
    ]


def starting_candidate(spec: Any, task: Any) -> Any:
    """The task's unoptimized program as a PromptCandidate, what an evaluation benchmark evaluates."""
    from lsl_dagster.method.prompts import capture
    from lsl_dagster.records import Ledger, Provenance

    provenance = Provenance(
        stage="bench",
        optimizer="none",
        model=spec.large_model.model,
        seed=spec.seed,
        spec_hash=spec.spec_hash,
    )
    return capture(
        task.program(), task, spec.experiment_id, provenance, Ledger(stage="bench"), spec.simulated
    )
