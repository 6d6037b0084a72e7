"""What a resume costs: kill -9 a run half-way through Stage 2, resume it, count what was paid twice.

    .venv/bin/python bench/resume.py [--repeat 3] [--quick]

Per repetition, in a fresh instance: an uninterrupted reference run of the experiment (both models over
HTTP from the sim server); then the same experiment again, killed with SIGKILL once its call log holds half
of the reference's Stage 2 calls, and resumed as a user would: `lsl status` (what is left; it only
reads), then `dagster asset materialize` of the assets not yet materialized. Every request
the server answers is recorded, so repaid calls are counted exactly. Two kills per repetition: with the
provider frozen first (the mechanism: what is in flight is never answered) and a real crash (the provider
keeps answering up to the kill).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import Lab, make_lab, materialize, median, parser, print_table, shipped_experiment, spread
from _common import run as run_command
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from lsl_dagster.graph import STAGES
from lsl_dagster.sim.keys import data_dir_keys
from lsl_dagster.sim.server import SimServer
from lsl_dagster.sim.tiers import TIERS

ASSETS = list(STAGES)  # the stage assets
KEYS = data_dir_keys(Path(__file__).resolve().parent.parent / "data")  # what the sim server plays
LATENCY_S = 0.01
QUICK = {
    "stage1": {"optimizer": "miprov2", "max_calls": 80},
    "stage2": {"max_calls": 60},
    "data": {"train": 12, "val": 8},
    "evaluation": {"split": "test", "limit": 40},
}


def experiment(port: int, quick: bool) -> dict[str, Any]:
    """The shipped example (or a small one), with both models served over HTTP by the sim server."""
    spec = {**shipped_experiment(), **(QUICK if quick else {})}
    base = f"http://127.0.0.1:{port}/v1"
    for role, tier in (("large_model", "large"), ("small_model", "small")):
        # The sim tier's price, so that max_cost_usd holds as it does on sim/<tier>.
        price = dataclasses.asdict(TIERS[tier].price)
        spec[role] = {"model": f"openai/sim-{tier}", "api_base": base, "price": price}
    return spec


def stage_calls(lab: Lab, experiment_id: str, stage: str) -> int:
    path = lab.runs_dir / experiment_id / "calls.jsonl"
    if not path.exists():
        return 0
    complete = path.read_text().split("\n")[:-1]  # a line being written may be torn
    return sum(r.get("stage") == stage and "event" not in r for r in map(json.loads, filter(None, complete)))


def materialized(lab: Lab, experiment_id: str) -> list[str]:
    with DagsterInstance.from_config(str(lab.home)) as instance:
        return [
            asset
            for asset in ASSETS
            if instance.fetch_materializations(
                AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[experiment_id]), limit=1
            ).records
        ]


def outcome(lab: Lab, experiment_id: str) -> tuple[Any, ...]:
    """The comparison's arms and differences; an arm's calls and cost are left out (what was paid twice
    after a real crash is in them)."""
    comparison = json.loads((lab.runs_dir / experiment_id / "comparison.json").read_text())
    arms = [{k: v for k, v in arm.items() if k not in ("calls", "cost_usd")} for arm in comparison["arms"]]
    return arms, comparison["differences"]


def logged_calls(lab: Lab, experiment_id: str) -> int:
    """Requests the experiment's call log says were answered."""
    lines = (lab.runs_dir / experiment_id / "calls.jsonl").read_text().split("\n")[:-1]
    return sum(bool(r.get("ok")) for r in map(json.loads, filter(None, lines)))


@dataclass
class Result:
    reference_s: float  # the uninterrupted `dagster asset materialize`, start to exit
    killed_after_s: float  # launch of the run that was killed, to the kill
    status_s: float  # `lsl status`, start to exit
    resume_s: float  # `dagster asset materialize` of the missing assets, start to exit
    reference_calls: int
    resumed_calls: int  # requests the resumed run had answered
    repaid: int  # answered more often (killed + resumed) than in the reference, summed over requests
    missed: int  # answered less often than in the reference
    unlogged: int  # answered by the server (killed + resumed) but not in the call log: never received
    replayed: int  # responses the resumed stages took from the cache (paid by the killed run)
    done_before: int  # assets materialized when the run was killed
    same_results: bool

    @property
    def fraction(self) -> float:
        return (self.status_s + self.resume_s) / self.reference_s


def reference_run(lab: Lab, quick: bool) -> tuple[float, Counter[str]]:
    with SimServer(latency_s=LATENCY_S, answer_keys=KEYS).start() as server:
        lab.write_experiment("reference", experiment(server.port, quick))
        reference_s, _ = run_command(materialize("reference"), lab.env())
        return reference_s, Counter(server.served_requests)


def once(lab: Lab, quick: bool, reference_s: float, reference: Counter[str], *, freeze: bool) -> Result:
    stage2 = stage_calls(lab, "reference", "stage2")
    name = "frozen" if freeze else "crashed"

    first = SimServer(latency_s=LATENCY_S, answer_keys=KEYS).start()
    lab.write_experiment(name, experiment(first.port, quick))
    started = time.perf_counter()
    process = subprocess.Popen(
        materialize(name), env=lab.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while stage_calls(lab, name, "stage2") < stage2 // 2:
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.01)
        if freeze:
            # Freeze the provider and let the client store what it already received: requests in flight
            # at the kill are then never answered (never paid), as in test_resume.py.
            first.freeze()
            time.sleep(0.3)
        killed_after_s = time.perf_counter() - started
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        first.stop()

    status_s, status = run_command([str(Path(sys.executable).with_name("lsl")), "status", name], lab.env())
    assert f"{name}: next:" in status, status  # it says what is left (and, reading only, changes nothing)
    done = materialized(lab, name)
    missing = [asset for asset in ASSETS if asset not in done]
    with SimServer(latency_s=LATENCY_S, port=first.port, answer_keys=KEYS).start() as second:
        resume_s, _ = run_command(materialize(name, ",".join(["experiment_file", *missing])), lab.env())
        resumed = Counter(second.served_requests)
    paid = Counter(first.served_requests) + resumed
    ledger = json.loads((lab.runs_dir / name / "stage2_hardened_prompt.json").read_text())["ledger"]
    return Result(
        reference_s=reference_s,
        killed_after_s=killed_after_s,
        status_s=status_s,
        resume_s=resume_s,
        reference_calls=reference.total(),
        resumed_calls=resumed.total(),
        repaid=(paid - reference).total(),
        missed=(reference - paid).total(),
        unlogged=paid.total() - logged_calls(lab, name),
        replayed=sum(usage["replayed"] for usage in ledger["by_model"].values()),
        done_before=len(done),
        same_results=outcome(lab, name) == outcome(lab, "reference"),
    )


def main() -> None:
    args = parser(__doc__.split("\n")[0], repeat=3).parse_args()
    repeat = 1 if args.quick else args.repeat
    frozen: list[Result] = []
    crashed: list[Result] = []
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp:
            lab = make_lab(Path(tmp))
            reference_s, reference = reference_run(lab, args.quick)
            frozen.append(once(lab, args.quick, reference_s, reference, freeze=True))
            crashed.append(once(lab, args.quick, reference_s, reference, freeze=False))
        print(f"resume {i + 1}/{repeat}: frozen {frozen[-1]}; real crash {crashed[-1]}", file=sys.stderr)

    def row(label: str, name: str, fmt: str = "{:.2f}") -> list[str]:
        return [label, *(spread([getattr(r, name) for r in results], fmt) for results in (frozen, crashed))]

    passed = all(x.repaid == 0 for x in frozen) and all(x.repaid <= 8 for x in crashed)

    def work_left(results: list[Result]) -> str:
        return f"{median(x.resumed_calls / x.reference_calls for x in results):.0%}"

    print_table(
        f"Resume after kill -9 at ~50% of Stage 2 ({'small experiment' if args.quick else 'arith-sim-01'} "
        f"over HTTP, L = {LATENCY_S * 1000:.0f} ms), median of {repeat}",
        ["", "provider frozen, then kill", "real crash (no freeze)"],
        [
            row("requests answered, uninterrupted reference run", "reference_calls", "{:.0f}"),
            row("requests answered, resumed run", "resumed_calls", "{:.0f}"),
            row("  Stage 2 responses replayed from the cache", "replayed", "{:.0f}"),
            row("repaid calls: killed + resumed answered beyond the reference", "repaid", "{:.0f}"),
            row("missed calls: reference answered beyond killed + resumed", "missed", "{:.0f}"),
            row("answered but not in the call log (never received)", "unlogged", "{:.0f}"),
            [
                "results identical to the reference (scores, arms, differences)",
                *(str(all(x.same_results for x in results)) for results in (frozen, crashed)),
            ],
            row(f"assets materialized before the kill (of {len(ASSETS)})", "done_before", "{:.0f}"),
            row("uninterrupted run, s (R)", "reference_s"),
            row("killed run, launch to kill, s", "killed_after_s"),
            row("lsl status, s (S)", "status_s"),
            row("materialize the missing assets, s (M)", "resume_s"),
            row("resume time as a fraction of the run: (S + M) / R", "fraction", "{:.0%}"),
            ["work left at the kill: resumed calls / reference calls", work_left(frozen), work_left(crashed)],
        ],
        [
            "Requests are told apart by (model, messages, seed), counted by the server as it answers them.",
            "Times are wall times of the subprocesses, from a fresh Dagster instance (repo dagster.yaml).",
            "Targets: repaid calls = 0 with the provider frozen; in a real crash at most max_concurrency",
            f"(8), the requests in flight. Pass: {'yes' if passed else 'NO'}.",
        ],
    )


if __name__ == "__main__":
    main()
