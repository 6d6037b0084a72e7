"""What orchestration adds on top of the LLM calls: Dagster runs against a plain script making the same calls.

    .venv/bin/python bench/overhead.py [--repeat 3] [--campaign-repeat 2] [--quick]

1. One experiment (the shipped arith-sim-01 on the sim models): `dagster asset materialize` in a fresh
   instance against bench/plain.py (the same stage functions in the same order, no Dagster run); both are
   subprocesses, so both pay interpreter start-up and imports. Their call logs must record the same calls.
   Beside them, Dagster's floor: bench/floor.py, the same asset graph with steps that do nothing, against
   `python -c "import dagster"`. What lsl_dagster adds is the difference less the floor.
2. A campaign of 20 experiments (1 task x 1 model pair x 20 seeds): `lsl campaign run` (one run per
   experiment, 4 worker processes) against bench/plain.py running the 20 experiments one after another in
   one process.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    BENCH,
    BIN,
    Lab,
    call_signature,
    make_lab,
    materialize,
    median,
    parser,
    print_table,
    shipped_experiment,
    spread,
)
from _common import run as run_command

EXPERIMENT = "arith-sim-01"
AGAIN = "arith-sim-02"  # the same spec again, in the instance the first run created
CAMPAIGN = "bench-overhead"
# Small experiments, so that 20 of them take a few minutes: the campaign measures per-run costs.
CAMPAIGN_EXPERIMENT = {
    "stage1": {"max_calls": 80},
    "stage2": {"max_calls": 60},
    "data": {"train": 12, "val": 8},
    "evaluation": {"split": "test", "limit": 40},
}
PAIR = {"name": "l-s", "large_model": {"model": "sim/large"}, "small_model": {"model": "sim/small"}}


def cpu_seconds() -> float:
    """CPU used by the finished child processes (and the descendants they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plain(lab: Lab, experiments: list[str], *extra: str) -> tuple[float, float, dict]:
    """bench/plain.py in a subprocess: (wall s, CPU s, its own timings)."""
    cpu = cpu_seconds()
    wall, out = run_command([sys.executable, str(BENCH / "plain.py"), *experiments, *extra], lab.env())
    return wall, cpu_seconds() - cpu, json.loads(out.strip().splitlines()[-1])


@dataclass
class Single:
    dagster_s: float
    dagster_cpu_s: float
    before_run_s: float  # process start to RUN_START: imports, code location, new instance, run creation
    in_run_s: float  # RUN_START to RUN_SUCCESS
    # The same, for a second experiment in the instance the first one created (a researcher's usual case)
    again_s: float
    again_cpu_s: float
    again_before_run_s: float
    plain_s: float
    plain_cpu_s: float
    plain_imports_s: float
    plain_experiment_s: float
    # Dagster's floor: the same graph with no-op steps (fresh instance, then in use), and `import dagster`
    floor_s: float
    floor_again_s: float
    import_dagster_s: float
    calls: int
    same_calls: bool

    @property
    def floor_over_import_s(self) -> float:
        return self.floor_s - self.import_dagster_s

    @property
    def floor_again_over_import_s(self) -> float:
        return self.floor_again_s - self.import_dagster_s

    @property
    def above_floor_s(self) -> float:
        return self.dagster_s - self.plain_s - self.floor_over_import_s

    @property
    def again_above_floor_s(self) -> float:
        return self.again_s - self.plain_s - self.floor_again_over_import_s


def floor(root: Path) -> tuple[float, float, float]:
    """bench/floor.py in a fresh instance, again in that instance, and `import dagster`: wall seconds."""
    from floor import GRAPH, graph_of

    from lsl_dagster.definitions import build_definitions
    from lsl_dagster.defs.assets import GROUP

    lab = make_lab(root)
    lab.write_experiment(EXPERIMENT, shipped_experiment())
    graph = root / "graph.json"
    graph.write_text(json.dumps(graph_of(build_definitions(lab.data_dir, lab.runs_dir), GROUP, EXPERIMENT)))
    env = {**lab.env(), GRAPH: str(graph)}
    command = materialize(EXPERIMENT, module="floor", working_directory=BENCH)
    fresh, _ = run_command(command, env)
    again, _ = run_command(command, env)
    imported, _ = run_command([sys.executable, "-c", "import dagster"], env)
    return fresh, again, imported


def single(root: Path) -> Single:
    dagster_lab, plain_lab = make_lab(root / "dagster"), make_lab(root / "plain")
    for lab in (dagster_lab, plain_lab):
        lab.write_experiment(EXPERIMENT, shipped_experiment())
    dagster_lab.write_experiment(AGAIN, shipped_experiment())
    first = timed_materialize(dagster_lab, EXPERIMENT)
    again = timed_materialize(dagster_lab, AGAIN)
    plain_s, plain_cpu, timings = plain(plain_lab, [EXPERIMENT])
    floor_s, floor_again_s, import_dagster_s = floor(root / "floor")
    baseline = call_signature(plain_lab.calls(EXPERIMENT))
    ran = [call_signature(dagster_lab.calls(e)) for e in (EXPERIMENT, AGAIN)]
    return Single(
        dagster_s=first[0],
        dagster_cpu_s=first[1],
        before_run_s=first[2],
        in_run_s=first[3],
        again_s=again[0],
        again_cpu_s=again[1],
        again_before_run_s=again[2],
        plain_s=plain_s,
        plain_cpu_s=plain_cpu,
        plain_imports_s=timings["imports_s"],
        plain_experiment_s=timings["per_experiment_s"][0],
        floor_s=floor_s,
        floor_again_s=floor_again_s,
        import_dagster_s=import_dagster_s,
        calls=sum(baseline.values()),
        same_calls=all(r == baseline for r in ran),
    )


def timed_materialize(lab: Lab, experiment_id: str) -> tuple[float, float, float, float]:
    """`dagster asset materialize` of one experiment: wall, CPU, start to RUN_START, RUN_START to end."""
    from dagster import DagsterInstance, RunsFilter

    cpu, started = cpu_seconds(), time.time()
    wall, _ = run_command(materialize(experiment_id), lab.env())
    used = cpu_seconds() - cpu
    with DagsterInstance.from_config(str(lab.home)) as instance:
        (record,) = instance.get_run_records(RunsFilter(tags={"dagster/partition": experiment_id}))
    return wall, used, record.start_time - started, record.end_time - record.start_time


def import_times(repeat: int) -> list[tuple[str, float]]:
    """Wall time of `python -c STATEMENT`, each in a fresh interpreter (median of `repeat`)."""
    statements = [
        ("python -c pass (interpreter start-up)", "pass"),
        ("import dspy", "import dspy"),
        ("import dagster", "import dagster"),
        (
            "import lsl_dagster.method.stages, .workspace (what plain.py imports)",
            "import lsl_dagster.method.stages, lsl_dagster.defs.resources",
        ),
        ("import lsl_dagster.definitions (the code location, built)", "import lsl_dagster.definitions"),
    ]
    times = []
    for label, statement in statements:
        walls = []
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-W", "ignore", "-c", statement], check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
        times.append((label, median(walls)))
    return times


@dataclass
class Campaign:
    wall_s: float
    before_first_run_s: float  # launch to the first experiment run's RUN_START
    experiments_s: float  # first experiment RUN_START to last experiment RUN_SUCCESS
    summary_s: float  # last experiment RUN_SUCCESS to the campaign_summary run's RUN_SUCCESS
    after_last_run_s: float  # last experiment RUN_SUCCESS to `lsl campaign run` exiting
    mean_run_s: float  # RUN_START to RUN_SUCCESS of the experiment runs
    mean_launch_s: float  # run created to RUN_START: waiting for a worker, then the run starting up
    mean_concurrency: float  # run durations summed over the experiment phase
    cpu_s: float  # lsl and its worker processes (forked children it waits for)
    plain_s: float
    plain_cpu_s: float
    plain_experiments_s: float  # plain.py's time inside its experiments, all of them
    same_calls: bool

    @property
    def fixed_s(self) -> float:
        return self.before_first_run_s + self.after_last_run_s

    def marginal_s(self, n: int) -> float:
        return (self.experiments_s - self.plain_experiments_s) / n

    def amortized_s(self, n: int) -> float:
        return (self.wall_s - self.plain_s) / n


def campaign(root: Path, seeds: int) -> Campaign:
    from dagster import DagsterInstance

    dagster_lab, plain_lab = make_lab(root / "dagster"), make_lab(root / "plain")
    grid = {
        "tasks": ["arithmetic"],
        "model_pairs": [PAIR],
        "seeds": list(range(seeds)),
        "experiment": CAMPAIGN_EXPERIMENT,
    }
    for lab in (dagster_lab, plain_lab):
        lab.write_campaign(CAMPAIGN, grid)
    ids = [f"{CAMPAIGN}--arithmetic--l-s--miprov2--s{seed}" for seed in range(seeds)]

    cpu, started = cpu_seconds(), time.time()
    run_command([str(BIN / "lsl"), "campaign", "run", CAMPAIGN], dagster_lab.env(), timeout=3600)
    ended, cpu = time.time(), cpu_seconds() - cpu
    with DagsterInstance.from_config(str(dagster_lab.home)) as instance:
        records = instance.get_run_records()
        runs = [r for r in records if r.dagster_run.tags.get("dagster/partition") in ids]
        (summary,) = [r for r in records if r.dagster_run.tags.get("dagster/partition") == CAMPAIGN]
        assert len(runs) == seeds and all(r.end_time for r in runs), "every experiment ran once"
        # A run's own start-up: created (submitted) to RUN_START, from the public run records.
        launches = [r.start_time - r.create_timestamp.timestamp() for r in runs]
    first_start = min(r.start_time for r in runs)
    last_end = max(r.end_time for r in runs)
    durations = [r.end_time - r.start_time for r in runs]

    plain_s, plain_cpu, timings = plain(plain_lab, ids, "--campaign", CAMPAIGN)
    same = all(call_signature(dagster_lab.calls(e)) == call_signature(plain_lab.calls(e)) for e in ids)
    return Campaign(
        wall_s=ended - started,
        before_first_run_s=first_start - started,
        experiments_s=last_end - first_start,
        summary_s=summary.end_time - last_end,
        after_last_run_s=ended - last_end,
        mean_run_s=sum(durations) / seeds,
        mean_launch_s=sum(launches) / seeds,
        mean_concurrency=sum(durations) / (last_end - first_start),
        cpu_s=cpu,
        plain_s=plain_s,
        plain_cpu_s=plain_cpu,
        plain_experiments_s=sum(timings["per_experiment_s"]),
        same_calls=same,
    )


def main() -> None:
    p = parser(__doc__.split("\n")[0], repeat=3)
    p.add_argument("--campaign-repeat", type=int, default=2, help="campaign runs (median; default 2)")
    p.add_argument("--seeds", type=int, default=20, help="experiments in the campaign (default 20)")
    args = p.parse_args()
    repeat, campaign_repeat, seeds = args.repeat, args.campaign_repeat, args.seeds
    if args.quick:
        repeat, campaign_repeat, seeds = 1, 1, 2

    singles = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
            singles.append(single(Path(tmp)))
        print(f"single experiment {i + 1}/{repeat}: {singles[-1]}", file=sys.stderr)
    assert all(s.same_calls for s in singles), "Dagster and the plain script made different calls"

    def one(name: str) -> str:
        return spread([getattr(s, name) for s in singles])

    def signed(name: str) -> str:
        return spread([getattr(s, name) for s in singles], "{:+.2f}")

    differences = [s.dagster_s - s.plain_s for s in singles]
    again = [s.again_s - s.plain_s for s in singles]
    relative = median(s.dagster_s / s.plain_s - 1 for s in singles)
    print_table(
        f"Overhead of one experiment ({EXPERIMENT}: {singles[0].calls} sim calls), median of {repeat}",
        ["", "wall s", "CPU s"],
        [
            ["plain script (bench/plain.py)", one("plain_s"), one("plain_cpu_s")],
            ["  imports", one("plain_imports_s"), ""],
            ["  the experiment", one("plain_experiment_s"), ""],
            ["dagster asset materialize", one("dagster_s"), one("dagster_cpu_s")],
            ["  process start to RUN_START", one("before_run_s"), ""],
            ["  RUN_START to RUN_SUCCESS", one("in_run_s"), ""],
            [
                "difference (Dagster - plain)",
                f"{median(differences):+.2f} ({relative:+.0%})",
                f"{median(s.dagster_cpu_s - s.plain_cpu_s for s in singles):+.2f}",
            ],
            ["dagster asset materialize, instance in use", one("again_s"), one("again_cpu_s")],
            ["  process start to RUN_START", one("again_before_run_s"), ""],
            [
                "difference (Dagster - plain)",
                f"{median(again):+.2f} ({median(s.again_s / s.plain_s - 1 for s in singles):+.0%})",
                f"{median(s.again_cpu_s - s.plain_cpu_s for s in singles):+.2f}",
            ],
            ["Dagster's floor: this graph, steps doing nothing (floor.py)", one("floor_s"), ""],
            ["  over python -c 'import dagster'", signed("floor_over_import_s"), ""],
            ["  instance in use", one("floor_again_s"), ""],
            ["  over python -c 'import dagster'", signed("floor_again_over_import_s"), ""],
            ["lsl_dagster above the floor (difference - floor)", signed("above_floor_s"), ""],
            ["  instance in use", signed("again_above_floor_s"), ""],
        ],
        [
            "Same calls: equal multisets of (stage, model, ok, tokens in, tokens out) in the two call logs.",
            "Wall: subprocess start to exit. CPU: user + sys of the subprocess. (min-max) over the runs.",
            "Dagster runs first in a fresh $DAGSTER_HOME (its SQLite storage is created on first use), then",
            f"a second experiment ({AGAIN}, the same spec) in that instance, as a researcher's next runs.",
            "Target: one experiment <= 2 s over the plain script: fresh instance "
            f"{median(differences):+.2f} s, instance in use {median(again):+.2f} s.",
            "The floor runs the same assets, inputs, pool and checks with no work in them, importing only",
            "Dagster: what Dagster costs any experiment before lsl_dagster does anything.",
        ],
    )
    imports = max(repeat, 3) if not args.quick else 1
    print_table(
        f"Start-up: a fresh interpreter running one statement, median of {imports}",
        ["statement", "wall s"],
        [[label, f"{wall:.2f}"] for label, wall in import_times(imports)],
    )

    campaigns = []
    for i in range(campaign_repeat):
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
            campaigns.append(campaign(Path(tmp), seeds))
        print(f"campaign {i + 1}/{campaign_repeat}: {campaigns[-1]}", file=sys.stderr)
    assert all(c.same_calls for c in campaigns), "the campaign and the plain script made different calls"

    def col(name: str, fmt: str = "{:.1f}") -> str:
        return spread([getattr(c, name) for c in campaigns], fmt)

    print_table(
        f"Overhead per experiment in a campaign of {seeds} experiments (1 task x 1 pair x {seeds} seeds), "
        f"median of {campaign_repeat}",
        ["", "seconds"],
        [
            ["plain script: all experiments one after another + summary", col("plain_s")],
            ["  inside the experiments (P)", col("plain_experiments_s")],
            ["lsl campaign run (C)", col("wall_s")],
            ["  launch to first experiment run started (A)", col("before_first_run_s")],
            ["  first experiment run started to last one ended (E)", col("experiments_s")],
            ["  last experiment run ended to campaign_summary ended", col("summary_s")],
            ["  last experiment run ended to lsl exiting (B)", col("after_last_run_s")],
            ["  mean run, RUN_START to RUN_SUCCESS", col("mean_run_s", "{:.2f}")],
            [
                "  mean run created to RUN_START (queued for a worker, start-up)",
                col("mean_launch_s", "{:.2f}"),
            ],
            ["  mean runs executing at once (at most 4)", col("mean_concurrency", "{:.2f}")],
            ["fixed cost of the campaign: A + B", spread([c.fixed_s for c in campaigns], "{:.1f}")],
            [
                "marginal overhead per experiment: (E - P) / n",
                spread([c.marginal_s(seeds) for c in campaigns]),
            ],
            [
                "amortized overhead per experiment: (C - plain) / n",
                spread([c.amortized_s(seeds) for c in campaigns]),
            ],
            ["CPU s: plain script", col("plain_cpu_s")],
            ["CPU s: lsl campaign run, with its workers", col("cpu_s")],
            [
                "CPU overhead per experiment: (CPU lsl - CPU plain) / n",
                spread([(c.cpu_s - c.plain_cpu_s) / seeds for c in campaigns]),
            ],
        ],
        [
            "Both made the same calls in each experiment. Times: the bench's clock, Dagster's run records.",
            "plain.py runs the experiments one after another in one process; the campaign runs up to 4 at",
            "once (--workers 4), in worker processes forked from lsl once it has loaded Dagster and the code",
            "location. CPU (user + sys, the processes and the children they waited for) does not depend on",
            "other work on the machine as much as wall times do.",
        ],
    )


if __name__ == "__main__":
    main()
