"""Sequential evaluation (`evaluation.sequential`): every arm on one random order of the evaluation examples,
in rounds, until each paired difference is settled by its anytime-valid confidence sequence.

The sequences (results.confseq) cover their difference at every round at once, so stopping at whichever
round the data settle it (or the money runs out) keeps them valid. Each of the k differences gets
alpha / k (Bonferroni), so the family-wise error is at most alpha. The rounds run as one stage
(graph.ROUNDS) that scores every arm; each evaluation then replays its prefix from the response cache.
"""

from __future__ import annotations

import contextvars
import math
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import dspy
import numpy as np

from lsl_dagster import graph
from lsl_dagster.llm.ledger import BudgetExhausted
from lsl_dagster.llm.structured import ModelAdapter
from lsl_dagster.method.evaluation import evaluate, scores
from lsl_dagster.method.prompts import rebuild
from lsl_dagster.method.run import StageRun
from lsl_dagster.method.stages import sequential_order
from lsl_dagster.records import PromptCandidate, SequenceBounds, SequentialDecision
from lsl_dagster.results.confseq import paired_difference_sequence
from lsl_dagster.spec.experiment import ExperimentSpec, SequentialSpec
from lsl_dagster.tasks.task import Example, Task

# The call-log event that records a decision, so every evaluation (and a resumed run) uses the same one.
DECISION = "sequential_decision"
# Examples per arm in a round after the first (which is min_examples): at least the model's concurrency,
# so the arms' rounds together keep every allowed request busy.
ROUND_MIN = 10


def recorded(records: Iterable[dict[str, Any]], key: str) -> SequentialDecision | None:
    """The last decision the call log holds for `key`, if any."""
    found = None
    for record in records:
        if record.get("event") == DECISION and record.get("key") == key:
            found = record["decision"]
    return None if found is None else SequentialDecision.model_validate(found)


def record(decision: SequentialDecision) -> dict[str, Any]:
    """The decision as a call-log event (it costs nothing)."""
    return {
        "stage": graph.ROUNDS,
        "event": DECISION,
        "key": decision.key,
        "decision": decision.model_dump(mode="json"),
    }


# Per difference, the form (its population, None: with replacement) and bounds of its last sequence.
Computed = dict[tuple[str, str], tuple[int | None, tuple[float, float]]]


def bounds(
    per_arm: dict[str, list[float | None]],
    differences: Iterable[tuple[str, str]],
    settings: SequentialSpec,
    population: int,
    computed: Computed | None = None,
) -> list[SequenceBounds]:
    """Each difference's sequence after the examples seen so far, at alpha / k, and whether it settles.
    `computed` (updated here) lets each round compute only the candidates still inside its sequence."""
    differences = list(differences)
    level = settings.alpha / len(differences)
    computed = {} if computed is None else computed
    out = []
    for arm, baseline in differences:
        pairs = [(a, b) for a, b in zip(per_arm[arm], per_arm[baseline], strict=True) if None not in (a, b)]
        a = np.array([p[0] for p in pairs], dtype=np.float64)
        b = np.array([p[1] for p in pairs], dtype=np.float64)
        diff = float(np.mean(a - b)) if pairs else 0.0
        lower, upper = -1.0, 1.0
        if pairs:
            # The finite-population form holds for a uniform prefix of the population: only while every
            # example so far was scored by both arms (an unscored one is not a draw from it).
            finite = population if settings.finite and len(pairs) == len(per_arm[arm]) else None
            form, within = computed.get((arm, baseline), (finite, (-1.0, 1.0)))
            sequence = paired_difference_sequence(
                a, b, level, finite, within=within if form == finite else (-1.0, 1.0)
            )
            lower, upper = float(sequence.lower[-1]), float(sequence.upper[-1])
            computed[arm, baseline] = (finite, (lower, upper))
            if math.isnan(lower):  # every candidate excluded: the alpha-probability miss
                lower = upper = diff
        settled: Literal["excludes_zero", "equivalent", "open"] = "open"
        if lower > 0 or upper < 0:
            settled = "excludes_zero"
        elif settings.margin > 0 and -settings.margin <= lower and upper <= settings.margin:
            settled = "equivalent"
        out.append(
            SequenceBounds(
                arm=arm, baseline=baseline, n=len(pairs), diff=diff, lower=lower, upper=upper, settled=settled
            )
        )
    return out


def evaluate_in_rounds(
    spec: ExperimentSpec,
    task: Task,
    prompts: dict[str, PromptCandidate],
    run: StageRun,
    key: str,
    worst_usd_per_example: float | None,
) -> SequentialDecision:
    """Score every arm's prompt (by arm name) on the large model in rounds, until every paired difference
    is settled, the examples run out, or the cost allowance cannot pay for the next round at its worst
    case (a request the provider then refuses ends it too: the unfinished round is not used)."""
    settings = spec.evaluation.sequential
    assert settings is not None
    examples = sequential_order(spec, task)
    population = len(examples)
    threads = run.threads("large")
    step = max(ROUND_MIN, threads)
    programs = {arm: rebuild(prompt, task) for arm, prompt in prompts.items()}
    per_arm: dict[str, list[float | None]] = {arm: [] for arm in prompts}
    run.progress.examples_total = population * len(prompts)
    differences = list(graph.differences_of(spec.arms))
    computed: Computed = {}
    sequences = bounds(per_arm, differences, settings, population, computed)
    done = rounds = 0
    reason: Literal["settled", "examples", "budget"] = "examples"
    with (
        tempfile.TemporaryDirectory() as scratch,
        dspy.context(lm=run.lm("large"), adapter=ModelAdapter()),
        ThreadPoolExecutor(len(prompts), thread_name_prefix="lsl-round") as pool,
    ):
        while done < population:
            end = min(population, done + (settings.min_examples if done == 0 else step))
            if not _affordable(run, len(prompts) * (end - done), worst_usd_per_example):
                reason = "budget"
                break
            chunk = examples[done:end]
            # Each arm on its own thread, all under this context (dspy's settings are context variables).
            futures = {
                arm: pool.submit(
                    contextvars.copy_context().run,
                    _score,
                    program,
                    task,
                    chunk,
                    threads,
                    Path(scratch) / f"{arm}.{rounds}.jsonl",
                    run,
                )
                for arm, program in programs.items()
            }
            try:
                got = {arm: future.result() for arm, future in futures.items()}
            except BudgetExhausted:
                for future in futures.values():
                    future.exception()  # wait for the other arms' requests to be refused
                reason = "budget"
                break
            for arm, values in got.items():
                per_arm[arm] += values
            done, rounds = end, rounds + 1
            sequences = bounds(per_arm, differences, settings, population, computed)
            if all(s.settled != "open" for s in sequences):
                reason = "settled"
                break
    run.meter.wait_idle()
    ledger = run.meter.ledger()
    # Every answer the rounds used once: paid now or before (calls), or from the cache, less the replays of
    # an earlier attempt's answers (counted in calls already).
    requests = ledger.calls + ledger.cache_hits - sum(u.replayed for u in ledger.by_model.values())
    return SequentialDecision(
        key=key,
        alpha=settings.alpha,
        margin=settings.margin,
        min_examples=settings.min_examples,
        population=population,
        finite=settings.finite,
        examples=done,
        rounds=rounds,
        reason=reason,
        sequences=sequences,
        requests=requests,
        fixed_requests=round(requests * population / done) if done else 0,
        ledger=ledger,
    )


def _score(
    program: dspy.Module, task: Task, chunk: list[Example], threads: int, out: Path, run: StageRun
) -> list[float | None]:
    evaluate(program, task, chunk, threads=threads, out=out, progress=run.progress)
    by_id = scores(out)
    return [by_id[example.id] for example in chunk]


def _affordable(run: StageRun, examples: int, worst_usd_per_example: float | None) -> bool:
    """Whether the stage's allowance can pay for a round of `examples` at their worst case."""
    reading = run.meter.reading()
    if reading.cost_allowance_usd is None or worst_usd_per_example is None:
        return True
    return reading.spent_usd + examples * worst_usd_per_example <= reading.cost_allowance_usd
