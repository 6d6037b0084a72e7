"""Sequential evaluation by simulation: coverage and examples used against the fixed design's n.

    .venv/bin/python bench/sequential.py [--n 200] [--runs 10000] [--differences 3] [--quick]

Simulates paired scores of two arms (binary: 10% of examples only the other arm passes, 10% + d only
this one; graded: scores from two Beta laws whose means differ by d) and runs the hedged betting
confidence sequence of lsl_dagster.results.confseq on each run, at alpha / k as the experiment does for
its k paired differences (Bonferroni). A run stops at the first example, not before min_examples, at
which its sequence excludes 0, else at n (margin 0). Both forms: with replacement (an infinite pool of
examples) and the finite-population form (a test set of n examples seen in a random order, its own mean
difference the target). No LLM is called; this measures the statistics alone.
"""

from __future__ import annotations

import numpy as np
from _common import median, parser, print_table, spread

from lsl_dagster.results.confseq import examples_used, excluded, log_capital

ALPHA = 0.05
MIN_EXAMPLES = 50
DIFFERENCES = (0.0, 0.02, 0.05, 0.10)


def binary(rng: np.random.Generator, d: float, shape: tuple[int, int]) -> np.ndarray:
    u = rng.random(shape)
    return np.where(u < 0.1 + d, 1.0, np.where(u < 0.2 + d, 0.0, 0.5))


def graded(rng: np.random.Generator, d: float, shape: tuple[int, int]) -> np.ndarray:
    a = rng.beta(4 * (0.5 + d / 2), 4 * (0.5 - d / 2), shape)
    b = rng.beta(4 * (0.5 - d / 2), 4 * (0.5 + d / 2), shape)
    return (a - b + 1) / 2


def measure(scores: str, d: float, finite: bool, n: int, runs: int, level: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = (binary if scores == "binary" else graded)(rng, d, (runs, n))
    population = n if finite else None
    truth = x.mean(axis=1, keepdims=True) if finite else (d + 1) / 2
    covered = ~excluded(log_capital(x, truth, level, population), level)[:, -1]
    used = examples_used(x, level, MIN_EXAMPLES, population)
    return {"coverage": covered.mean(), "used": used.mean(), "early": (used < n).mean()}


def main() -> None:
    p = parser(__doc__.split("\n")[0], repeat=1)
    p.add_argument("--n", type=int, default=200, help="the fixed design's examples per arm (default 200)")
    p.add_argument("--runs", type=int, default=10000, help="simulated sequences per case (default 10000)")
    p.add_argument("--differences", type=int, default=3, help="paired differences sharing alpha (default 3)")
    args = p.parse_args()
    runs = 2000 if args.quick else args.runs
    level = ALPHA / args.differences
    rows = []
    for scores in ("binary", "graded"):
        for finite in (False, True):
            for d in DIFFERENCES:
                seeds = range(args.repeat)
                results = [measure(scores, d, finite, args.n, runs, level, seed) for seed in seeds]
                used = [r["used"] for r in results]
                rows.append(
                    [
                        scores,
                        "finite" if finite else "infinite",
                        f"{d:+.2f}",
                        spread([r["coverage"] for r in results], "{:.4f}"),
                        spread(used, "{:.1f}"),
                        f"{100 * median(used) / args.n:.0f}%",
                        spread([100 * r["early"] for r in results], "{:.1f}"),
                    ]
                )
    print_table(
        f"sequential evaluation, {runs} sequences per case, fixed n = {args.n}, alpha {ALPHA} over "
        f"{args.differences} differences, min_examples {MIN_EXAMPLES}, median of {args.repeat}",
        ["scores", "pool", "true d", "coverage", "examples used", "of fixed n", "stopped early %"],
        rows,
        [
            "coverage: share of runs whose sequence contained the true difference at every example, at",
            f"level alpha/{args.differences} (guaranteed >= {1 - level:.4f}; family-wise >= {1 - ALPHA}).",
            "finite: the test set of n examples in a random order; the target is its own mean difference.",
            "stopped early: runs whose sequence excluded 0 before n (at d = 0: false verdicts, <= alpha/k).",
            "target: at d = +0.10 binary, <= 50% of the fixed design's examples.",
        ],
    )


if __name__ == "__main__":
    main()
