"""Forecast before spending: calls, tokens and cost of every stage of an experiment, without calling a model.

The same numbers allocate an experiment's `max_cost_usd` to its stages before the first call: the three
evaluations get their worst case reserved, the optimization stages share the rest in proportion to their
worst case, so optimization can never leave the evaluations (and so the comparison) without money. An
experiment whose cap cannot cover its evaluations is refused up front. A sequential evaluation has only
`min_examples` per arm reserved: its rounds then spend what the cap has left, and stop when it cannot pay
for the next round at its worst case.
"""

from __future__ import annotations

import math

import dspy
import numpy as np
from pydantic import BaseModel

from lsl_dagster import graph
from lsl_dagster.graph import ALL_EVALUATIONS
from lsl_dagster.llm.engine import worst_input_tokens
from lsl_dagster.llm.provider import ConfigError
from lsl_dagster.llm.providers import PROVIDERS
from lsl_dagster.method.optimizers import OPTIMIZERS
from lsl_dagster.method.optimizers.base import MAX_BOOTSTRAPPED_DEMOS, MAX_LABELED_DEMOS, Budget
from lsl_dagster.results.confseq import examples_used
from lsl_dagster.results.stats import detectable_difference
from lsl_dagster.results.text import table, usd
from lsl_dagster.spec.experiment import SIMULATED, ExperimentSpec, ModelSpec, Price
from lsl_dagster.tasks.task import Example, Task

# What an optimized prompt may add to the task's own: a rewritten instruction and a reasoning per demo.
INSTRUCTION_CHARS = 1000
DEMO_REASONING_CHARS = 400
# Assumed typical reply length for the expected cost; the worst case assumes every reply hits max_tokens.
EXPECTED_OUTPUT_TOKENS = 150
# Assumed share of test examples on which two arms disagree (one right, one wrong), for the detectable
# difference; prompts of one model on one task often disagree on 10-30% of them.
ASSUMED_DISCORDANCE = 0.2
POWER = 0.8
ALPHA = 0.05
# The true differences (0/1 scores) at which the plan simulates a sequential evaluation's examples used, and
# how many sequences per difference.
SEQUENTIAL_DIFFERENCES = (0.05, 0.10, 0.20)
SEQUENTIAL_RUNS = 400


class StageForecast(BaseModel):
    stage: str
    optimizer: str | None = None  # None for the evaluations
    models: list[str]
    calls: int
    input_tokens: int  # worst case: the estimate every request reserves (2 characters per token)
    output_tokens_expected: int
    output_tokens_max: int
    expected_cost_usd: float | None
    worst_cost_usd: float | None
    share_usd: float | None = None  # this stage's part of max_cost_usd


class Forecast(BaseModel):
    experiment_id: str
    max_cost_usd: float | None
    stages: list[StageForecast]
    # Why the cap cannot finish this experiment (it is then refused before any call), or None.
    refusal: str | None = None
    simulated: bool = False  # a sim model is in it: its prices are the simulator's, not a provider's
    evaluation_examples: int = 0  # the examples each arm is evaluated on
    differences: int = 0  # the paired differences Holm's adjustment runs over
    # The smallest difference (0/1 scores) the evaluations detect with POWER at Holm's strictest level,
    # ALPHA / differences, if ASSUMED_DISCORDANCE of the examples are discordant; None: too few examples
    # for any difference that discordance allows.
    detectable_difference: float | None = None
    # With evaluation.sequential: its min_examples, and the mean examples per arm until a true difference of
    # each of SEQUENTIAL_DIFFERENCES is found (simulated, ASSUMED_DISCORDANCE, one difference at alpha / k).
    sequential_min_examples: int | None = None
    sequential_examples: dict[str, float] = {}

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.stages)

    @property
    def expected_cost_usd(self) -> float | None:
        costs = [s.expected_cost_usd for s in self.stages]
        return None if None in costs else sum(c for c in costs if c is not None)

    @property
    def worst_cost_usd(self) -> float | None:
        costs = [s.worst_cost_usd for s in self.stages]
        return None if None in costs else sum(c for c in costs if c is not None)

    @property
    def evaluations_worst_usd(self) -> float | None:
        costs = [s.worst_cost_usd for s in self.stages if s.stage in ALL_EVALUATIONS]
        return None if None in costs else sum(c for c in costs if c is not None)

    @property
    def worst_usd_per_example(self) -> float | None:
        """One arm's evaluation of one example at its worst case (every reply at max_tokens)."""
        stage = next(s for s in self.stages if s.stage in ALL_EVALUATIONS)
        if stage.worst_cost_usd is None or not self.evaluation_examples:
            return None
        return stage.worst_cost_usd / self.evaluation_examples

    def share(self, stage: str) -> float | None:
        return next((s.share_usd for s in self.stages if s.stage == stage), None)

    def metadata(self) -> dict[str, float | int | None]:
        """Flat numbers for Dagster metadata."""
        out: dict[str, float | int | None] = {
            "plan_calls": self.calls,
            "plan_expected_cost_usd": self.expected_cost_usd,
            "plan_worst_cost_usd": self.worst_cost_usd,
            "plan_detectable_difference": self.detectable_difference,
        }
        for s in self.stages:
            out[f"plan_{s.stage}_calls"] = s.calls
            out[f"plan_{s.stage}_worst_cost_usd"] = s.worst_cost_usd
        return out


def _prompt_chars(task: Task) -> tuple[int, int]:
    """Characters of a typical and of the largest request one predictor sends: its prompt as DSPy's
    ChatAdapter renders it with a full set of demos; typical with the mean example, largest with the
    longest of the first training examples, long demo reasonings and a rewritten instruction."""
    examples = list(task.examples("train", 20)) or list(task.examples("dev", 20))

    def size(example: Example) -> int:
        return sum(map(len, example.inputs.values())) + sum(map(len, example.labels.values()))

    ranked = sorted(examples, key=size)
    typical, longest = ranked[len(ranked) // 2], ranked[-1]
    n_demos = MAX_BOOTSTRAPPED_DEMOS + MAX_LABELED_DEMOS

    def chars(example: Example, reasoning: int) -> int:
        # A predictor's fields that are not the program's (e.g. retrieved context) are sized like all of
        # the example's inputs together: a proxy, as their values exist only when the program runs.
        proxy = " ".join(example.inputs.values())
        most = 0
        for _, predictor in task.program().named_predictors():
            values = {
                f: example.inputs.get(f, example.labels.get(f, proxy)) for f in predictor.signature.fields
            }
            demo = {**values, "reasoning": "x" * reasoning}
            inputs = {f: values[f] for f in predictor.signature.input_fields}
            messages = dspy.ChatAdapter().format(predictor.signature, [demo] * n_demos, inputs)
            most = max(most, sum(len(str(m.get("content", ""))) for m in messages))
        return most

    return chars(typical, DEMO_REASONING_CHARS // 4), chars(longest, DEMO_REASONING_CHARS) + INSTRUCTION_CHARS


def _cost(price: Price | None, calls: int, input_tokens: int, output_tokens: int) -> float | None:
    return None if price is None else calls * price.cost(input_tokens, output_tokens)


def _stage(
    stage: str, calls: int, specs: list[ModelSpec], chars: tuple[int, int], optimizer: str | None = None
) -> StageForecast:
    prices = [PROVIDERS[s.provider].price(s) for s in specs]
    # Which model a call goes to is the optimizer's choice: bound each call by the dearest model.
    worst_price = None if None in prices else max(prices, key=lambda p: p.cost(1000, 1000))
    task_price = prices[0]
    max_tokens = max(s.max_tokens for s in specs)
    worst_in = worst_input_tokens(chars[1])  # what MeteredEngine reserves
    expected_in = math.ceil(chars[0] / 4)
    expected_out = min(EXPECTED_OUTPUT_TOKENS, max_tokens)
    return StageForecast(
        stage=stage,
        optimizer=optimizer,
        models=sorted({s.model for s in specs}),
        calls=calls,
        input_tokens=calls * worst_in,
        output_tokens_expected=calls * expected_out,
        output_tokens_max=calls * max_tokens,
        expected_cost_usd=_cost(task_price, calls, expected_in, expected_out),
        worst_cost_usd=_cost(worst_price, calls, worst_in, max_tokens),
    )


def forecast(spec: ExperimentSpec, task: Task) -> Forecast:
    """Every stage's calls, tokens and cost, and its share of max_cost_usd. Reads no model."""
    chars = _prompt_chars(task)
    predictors = len(task.program().named_predictors())
    split = spec.evaluation.split
    examples = (
        task.sizes[split] if spec.evaluation.limit is None else min(spec.evaluation.limit, task.sizes[split])
    )
    large, small = spec.large_model, spec.small_model
    reflection = spec.model(spec.stage2.reflection)
    stages = [
        _stage("stage1", spec.stage1.max_calls, [large], chars, spec.stage1.optimizer),
        _stage("stage2", spec.stage2.max_calls, [small, reflection], chars, spec.stage2.optimizer),
        # The budget-matched arm gets at most what Stage 1 and Stage 2 may use, with Stage 1's optimizer.
        _stage(
            "budget_matched",
            spec.stage1.max_calls + spec.stage2.max_calls,
            [large],
            chars,
            spec.stage1.optimizer,
        ),
        # The small-optimized arm, when listed: Stage 1's optimizer and budget on the small model alone.
        *(
            _stage(p.stage, spec.stage1.max_calls, [small], chars, spec.stage1.optimizer)
            for p in graph.prompts_of(spec.arms)
            if p.optional
        ),
        *(_stage(a.evaluation, examples * predictors, [large], chars) for a in graph.arms_of(spec.arms)),
    ]
    differences = len(graph.differences_of(spec.arms))
    plan = Forecast(
        experiment_id=spec.experiment_id,
        max_cost_usd=spec.max_cost_usd,
        stages=stages,
        simulated=spec.simulated,
        evaluation_examples=examples,
        differences=differences,
        detectable_difference=None
        if examples < 2
        else detectable_difference(examples, ASSUMED_DISCORDANCE, ALPHA / differences, POWER),
    )
    sequential = spec.evaluation.sequential
    if sequential is not None:
        plan.sequential_min_examples = sequential.min_examples
        level = sequential.alpha / differences
        plan.sequential_examples = {
            f"{d:.2f}": _sequential_examples(d, examples, level, sequential.min_examples, sequential.finite)
            for d in SEQUENTIAL_DIFFERENCES
        }
    plan.refusal = _budget_refusal(spec, task, predictors)
    if spec.max_cost_usd is not None and plan.refusal is None:
        _allocate(plan, spec.max_cost_usd)
    return plan


def _sequential_examples(d: float, examples: int, level: float, min_examples: int, finite: bool) -> float:
    """Mean examples per arm a sequential difference uses when the true one is d: of the examples, a share
    ASSUMED_DISCORDANCE is right for one arm only, (discordance + d) / 2 of them for the better arm."""
    rng = np.random.default_rng(0)
    u = rng.random((SEQUENTIAL_RUNS, examples))
    x = np.where(u < (ASSUMED_DISCORDANCE + d) / 2, 1.0, np.where(u < ASSUMED_DISCORDANCE, 0.0, 0.5))
    return float(examples_used(x, level, min_examples, examples if finite else None).mean())


def _budget_refusal(spec: ExperimentSpec, task: Task, predictors: int) -> str | None:
    """Why Stage 1's or Stage 2's max_calls cannot buy one step of its optimizer, or None:
    refused before Stage 1 spends anything, not when Stage 2 starts."""
    n_train = min(spec.data.train, task.sizes["train"])
    n_val = min(spec.data.val, task.sizes["dev"])
    try:
        for stage, optimizer, max_calls in (
            ("stage1", spec.stage1.optimizer, spec.stage1.max_calls),
            ("stage2", spec.stage2.optimizer, spec.stage2.max_calls),
        ):
            OPTIMIZERS[optimizer](Budget(stage, max_calls, predictors, n_train, n_val))
    except ConfigError as exc:
        return f"{spec.experiment_id}: {exc}"
    return None


def _allocate(plan: Forecast, cap: float) -> None:
    """Evaluations first (their worst case; a sequential one's min_examples), the optimization stages share
    the rest pro rata. A sequential evaluation's share is then what the cap has left when it runs."""
    needed = plan.evaluations_worst_usd
    if needed is None:
        return  # unpriced: LanguageModels.check refuses a capped experiment before this matters
    reserved = plan.sequential_min_examples
    if reserved is not None and plan.evaluation_examples:
        needed *= min(reserved, plan.evaluation_examples) / plan.evaluation_examples
    if cap < needed:
        count = sum(s.stage in ALL_EVALUATIONS for s in plan.stages)
        evaluations = {3: "three", 4: "four"}.get(count, str(count))
        what = (
            f"{plan.stages[-1].calls} calls each"
            if reserved is None
            else f"their first min_examples={reserved} examples each"
        )
        plan.refusal = (
            f"{plan.experiment_id}: max_cost_usd ${cap:.4f} cannot cover the {evaluations} evaluations, "
            f"which may cost up to ${needed:.4f} ({what}); raise max_cost_usd to at least ${needed:.4f} "
            "(plus what optimization should get) or lower evaluation.limit"
        )
        return
    optimization = [s for s in plan.stages if s.stage not in ALL_EVALUATIONS]
    weights = sum(s.worst_cost_usd or 0.0 for s in optimization)
    left = cap - needed
    for s in plan.stages:
        if s.stage in ALL_EVALUATIONS:
            s.share_usd = s.worst_cost_usd if reserved is None else None
        else:
            s.share_usd = left * (s.worst_cost_usd or 0.0) / weights if weights else 0.0


def render(plan: Forecast) -> str:
    """The forecast as a table, for `lsl plan`."""
    header = (
        "stage",
        "calls",
        "input tok (max)",
        "output tok exp/max",
        "expected",
        "worst case",
        "share of cap",
        "optimizer",
    )
    rows = [header]
    for s in plan.stages:
        rows.append(
            (
                s.stage,
                str(s.calls),
                f"{s.input_tokens:,}",
                f"{s.output_tokens_expected:,}/{s.output_tokens_max:,}",
                usd(s.expected_cost_usd),
                usd(s.worst_cost_usd),
                "-" if s.share_usd is None else usd(s.share_usd),
                s.optimizer or "-",
            )
        )
    rows.append(
        (
            "total",
            str(plan.calls),
            f"{sum(s.input_tokens for s in plan.stages):,}",
            f"{sum(s.output_tokens_expected for s in plan.stages):,}/"
            f"{sum(s.output_tokens_max for s in plan.stages):,}",
            usd(plan.expected_cost_usd),
            usd(plan.worst_cost_usd),
            "-" if plan.max_cost_usd is None else usd(plan.max_cost_usd),
            "",
        )
    )
    notes = [
        f"Forecast for {plan.experiment_id}; no model was called. Calls are upper bounds (max_calls, one per "
        "example and predictor); replayed responses are free.",
        f"Expected cost assumes ~{EXPECTED_OUTPUT_TOKENS} output tokens per call; the worst case assumes "
        "every reply reaches max_tokens and 2 characters per input token.",
    ]
    level = f"at alpha {ALPHA}/{plan.differences} (Holm's first step over the {plan.differences} differences)"
    assumed = (
        f"if {ASSUMED_DISCORDANCE:.0%} of the examples are right for one arm and wrong for the other (0/1 "
        "scores, normal approximation)"
    )
    if plan.detectable_difference is None:
        notes.append(
            f"Power: {plan.evaluation_examples} examples per arm are too few to find any paired difference "
            f"with {POWER:.0%} power {level}, {assumed}; raise evaluation.limit."
        )
    else:
        notes.append(
            f"Power: with {plan.evaluation_examples} examples per arm, a paired difference of "
            f"{plan.detectable_difference:.3f} or more is found with {POWER:.0%} power {level}, {assumed}; "
            "fewer discordant examples detect smaller differences."
        )
    if plan.sequential_min_examples is not None:
        at = ", ".join(f"{d} -> {n:.0f}" for d, n in plan.sequential_examples.items())
        notes.append(
            "Sequential: the rounds stop once every difference is settled; expected examples per arm of "
            f"{plan.evaluation_examples} until a true difference is found (simulated with "
            f"{ASSUMED_DISCORDANCE:.0%} discordant examples, one difference at alpha/{plan.differences}, "
            f"min_examples {plan.sequential_min_examples}): {at}. The calls above are the fixed design's."
        )
        if plan.max_cost_usd is not None:
            notes.append(
                "Sequential under max_cost_usd: only min_examples per arm are reserved; the rounds spend "
                "what the cap has left and stop, saying so, when it cannot pay for the next round at its "
                "worst case."
            )
    if plan.simulated:
        notes.append(f"{SIMULATED}: the sim's prices are made up, so are these costs.")
    if plan.refusal:
        notes.append(f"REFUSED: {plan.refusal}")
    return "\n".join([table(rows, rule=True), "", *notes])


def check(plan: Forecast) -> None:
    """Refuse, before any call, an experiment its cap cannot finish."""
    if plan.refusal:
        raise ConfigError(plan.refusal)
