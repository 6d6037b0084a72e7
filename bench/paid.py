"""Paid calls vs distinct requests: the shipped experiment against the sim HTTP server, counted at the server.

    .venv/bin/python bench/paid.py [--experiment arith-sim-01]

Runs the shipped experiment's stages (bench/plain.py's order, each inside `Workspace.stage`) with both
models pointed at an in-process `SimServer` as `openai/sim-<tier>` + `api_base`, then reads the server's
counters: requests answered, distinct requests among them (same model, messages and seed), and the cost the
server billed (its `usage.cost`). Every repeat of a distinct request is a call paid twice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import make_lab, median, parser, print_table, shipped_experiment

from lsl_dagster.defs.resources import Workspace
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.sim.keys import data_dir_keys
from lsl_dagster.sim.server import SimServer
from lsl_dagster.sim.tiers import TIERS


def _http(server: SimServer, tier: str) -> dict:
    price = TIERS[tier].price
    return {
        "model": f"openai/sim-{tier}",
        "api_base": server.url,
        "max_concurrency": 8,
        "price": {"input_per_mtok": price.input_per_mtok, "output_per_mtok": price.output_per_mtok},
    }


def measure(experiment: str) -> dict:
    from plain import run_experiment

    with tempfile.TemporaryDirectory(prefix="bench-paid-") as root:
        lab = make_lab(Path(root))
        # The server plays the answer keys of the lab's tasks, as the tests' sim server does: without
        # them it answers every task wrongly and the optimizers take another, shorter path.
        with SimServer(answer_keys=data_dir_keys(lab.data_dir)).start() as server:
            spec = shipped_experiment(experiment)
            spec.update(large_model=_http(server, "large"), small_model=_http(server, "small"))
            lab.write_experiment(experiment, spec)
            workspace = Workspace(data_dir=str(lab.data_dir), runs_dir=str(lab.runs_dir))
            comparison = run_experiment(workspace, LanguageModels(), experiment)
            stats = server.stats()
            distinct = len(server.served_requests)
            replayed = sum(
                usage.replayed + usage.cache_hits
                for ledger in comparison.usage.values()
                for usage in ledger.by_model.values()
            )
    return {
        "served": stats["served"],
        "distinct": distinct,
        "cost": stats["cost_usd"],
        "repeat_cost": server.repeat_cost_usd,
        "resamples": sum(n for t, n in server.repeats_by_temperature.items() if float(t) > 0),
        "hits": replayed,
        "scores": {arm.arm: arm.score for arm in comparison.arms},
    }


def main() -> None:
    p = parser(__doc__.split("\n")[0], repeat=1)
    p.add_argument("--experiment", default="arith-sim-01")
    args = p.parse_args()
    runs = [measure(args.experiment) for _ in range(args.repeat)]

    def mid(key: str) -> float:
        return median(r[key] for r in runs)

    served, distinct = mid("served"), mid("distinct")
    print_table(
        f"{args.experiment} against the sim HTTP server, counted at the server, median of {args.repeat}",
        ["requests answered", "distinct", "repeats", "of which resamples", "cost USD", "cost of repeats USD"],
        [
            [
                int(served),
                int(distinct),
                int(served - distinct),
                int(mid("resamples")),
                f"{mid('cost'):.4f}",
                f"{mid('repeat_cost'):.4f}",
            ]
        ],
        [
            "repeats: answers to a request identical to one already answered (model, messages, seed).",
            "resamples: repeats at temperature > 0 with a new DSPy rollout_id (MIPROv2 asking for another",
            "proposal): DSPy keys them apart on purpose, a real model answers them differently.",
            f"cache hits (replayed + repeats, free): {int(mid('hits'))}; scores: {runs[-1]['scores']}",
        ],
    )


if __name__ == "__main__":
    main()
