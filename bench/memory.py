"""How memory grows with the work: peak RSS of evaluating 1k, 5k and 20k examples.

    .venv/bin/python bench/memory.py [--repeat 3] [--quick] [--trace N]

Each evaluation runs in a fresh subprocess: `stages.evaluate_on_large` inside `Workspace.stage` (metered
engine, response cache on disk and in memory, call log, predictions streamed to JSONL) over the generated
arithmetic test split on `sim/large`. The child reports its peak RSS (VmHWM) and its RSS just before the
evaluation started. `--trace N` instead diffs tracemalloc snapshots around one evaluation of N examples and
prints where the memory that stayed allocated was allocated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from _common import REPO, freeze_imports, median, parser, print_table, run, spread, starting_candidate

SIZES = (1_000, 5_000, 20_000)
QUICK_SIZES = (500, 2_000)
TARGET_MB = 50
FD_THREADS = (8, 64)
FD_TARGET = 64  # issue 16: under a laptop's limits (256 on macOS)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def open_files() -> tuple[int, int]:
    """(all file descriptors of this process, those on the response cache's SQLite files)."""
    total = cache = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since listed
            cache += "responses.sqlite" in os.readlink(f"/proc/self/fd/{fd}")
            total += 1
    return total, cache


class FdSampler(threading.Thread):
    """Samples the open descriptors every 5 ms while an evaluation runs; keeps the peaks."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_total = self.peak_cache = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.005):
            total, cache = open_files()
            self.peak_total, self.peak_cache = max(self.peak_total, total), max(self.peak_cache, cache)

    def stop(self) -> None:
        self._done.set()
        self.join()


def child(n: int, trace: bool, threads: int = 8) -> None:
    """Evaluate n examples with `threads` threads; print one JSON line: peak and starting RSS (KiB), calls,
    peak open descriptors (all, and on the response cache), seconds."""
    from lsl_dagster.defs.resources import Workspace
    from lsl_dagster.llm.language_models import LanguageModels
    from lsl_dagster.method import stages
    from lsl_dagster.spec.experiment import ExperimentSpec
    from lsl_dagster.tasks.task import load_task

    freeze_imports()
    task = load_task("arithmetic", REPO / "data" / "tasks")
    spec = ExperimentSpec(
        experiment_id="bench-memory",
        task=task.name,
        large_model={"model": "sim/large", "max_concurrency": threads},
        small_model={"model": "sim/small"},
        evaluation={"split": "test", "limit": n},
    )
    candidate = starting_candidate(spec, task)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as runs:
        workspace = Workspace(data_dir=str(REPO / "data"), runs_dir=runs)
        out = Path(runs) / "predictions.jsonl"
        with workspace.stage(spec, "baseline_evaluation", LanguageModels(), None) as stage:
            if trace:
                tracemalloc.start(25)
                before = tracemalloc.take_snapshot()
            start_kib, start = _status_kib("VmRSS"), time.perf_counter()
            sampler = FdSampler()
            sampler.start()
            result = stages.evaluate_on_large(spec, task, candidate, "baseline", stage, out)
            sampler.stop()
            seconds = time.perf_counter() - start
            if trace:
                current, peak = tracemalloc.get_traced_memory()
                print(
                    f"tracemalloc: {current / 2**20:.1f} MiB traced at the end, peak {peak / 2**20:.1f} MiB"
                )
                print_growth(before, tracemalloc.take_snapshot())
        calls = sum(
            1 for line in (Path(runs) / "bench-memory" / "calls.jsonl").open() if '"event"' not in line
        )
    assert result.n == n
    peak_kib = _status_kib("VmHWM")
    print(
        json.dumps(
            {
                "peak_kib": peak_kib,
                "start_kib": start_kib,
                "cache_fds": sampler.peak_cache,
                "fds": sampler.peak_total,
                "calls": calls,
                "s": seconds,
            }
        )
    )


def print_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> None:
    stats = after.compare_to(before, "traceback")
    grown = sum(s.size_diff for s in stats)
    print(f"tracemalloc: {grown / 2**20:+.1f} MiB still allocated after the evaluation; largest sources:")
    for stat in stats[:12]:
        frames = [
            f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in reversed(stat.traceback[-4:])
        ]
        print(f"  {stat.size_diff / 2**20:+7.2f} MiB {stat.count_diff:+8d} blocks  " + " <- ".join(frames))


def main() -> None:
    p = parser(__doc__.split("\n")[0], repeat=3)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument(
        "--trace", type=int, metavar="N", help="tracemalloc diff around one evaluation of N examples"
    )
    args = p.parse_args()
    if args.child is not None:
        child(args.child, trace=False, threads=args.threads)
        return
    if args.trace is not None:
        child(args.trace, trace=True)
        return
    sizes, repeat = (QUICK_SIZES, 1) if args.quick else (SIZES, args.repeat)
    measured: dict[int, list[dict]] = {n: [] for n in sizes}
    for i in range(repeat):
        for n in sizes:
            _, out = run([sys.executable, __file__, "--child", str(n)])
            measured[n].append(json.loads(out.strip().splitlines()[-1]))
            print(f"{i + 1}/{repeat} n={n}: {measured[n][-1]}", file=sys.stderr)

    def mib(n: int, key: str) -> list[float]:
        return [m[key] / 1024 for m in measured[n]]

    rows = [
        [
            f"{n:,}",
            int(median(m["calls"] for m in measured[n])),
            spread(mib(n, "start_kib"), "{:.1f}"),
            spread(mib(n, "peak_kib"), "{:.1f}"),
            spread([(m["peak_kib"] - m["start_kib"]) / 1024 for m in measured[n]], "{:.1f}"),
            int(median(m["cache_fds"] for m in measured[n])),
            spread([m["s"] for m in measured[n]], "{:.1f}"),
        ]
        for n in sizes
    ]
    small, large = sizes[0], sizes[-1]
    growth = median(mib(large, "peak_kib")) - median(mib(small, "peak_kib"))
    print_table(
        f"Peak RSS of one evaluation on sim/large, by examples evaluated, median of {repeat}",
        ["examples", "calls", "RSS before MiB", "peak RSS MiB", "peak - before MiB", "cache fds", "eval s"],
        rows,
        [
            f"peak RSS ({large:,}) - peak RSS ({small:,}) = {growth:+.1f} MiB = {growth * 1.048576:+.1f} MB; "
            f"target (issue 5, 20k vs 1k): within {TARGET_MB} MB -> "
            + ("met" if growth * 1.048576 <= TARGET_MB else "MISSED"),
            "RSS before: after imports and stage set-up, just before evaluating. Peak: the child's VmHWM.",
            "cache fds: peak open descriptors on the response cache's SQLite files during the evaluation.",
        ],
    )
    fd_size = sizes[0]
    by_threads: dict[int, list[dict]] = {c: [] for c in FD_THREADS}
    for c in FD_THREADS:
        for _ in range(repeat):
            _, out = run([sys.executable, __file__, "--child", str(fd_size), "--threads", str(c)])
            by_threads[c].append(json.loads(out.strip().splitlines()[-1]))
    print_table(
        f"Open file descriptors during one evaluation of {fd_size:,} examples, by concurrency, "
        f"median of {repeat}",
        ["max_concurrency", "peak fds (whole process)", "peak fds on the response cache", "target"],
        [
            [
                c,
                int(median(m["fds"] for m in by_threads[c])),
                int(median(m["cache_fds"] for m in by_threads[c])),
                f"< {FD_TARGET}: "
                + ("met" if median(m["fds"] for m in by_threads[c]) < FD_TARGET else "MISSED"),
            ]
            for c in FD_THREADS
        ],
        [
            "Sampled every 5 ms from /proc/self/fd while dspy.Evaluate runs: everything the process holds",
            "(libraries, call log, predictions file) and the response cache's one SQLite connection.",
        ],
    )


if __name__ == "__main__":
    main()
