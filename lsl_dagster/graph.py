"""The experiment's stage graph, as data: every stage and arm, its asset key, the model it runs on, what it
reads and which evaluation scores which prompt. Assets, checks, the plan, the CLI, the instance readers
and the tests derive from this module; an asset key is spelled nowhere else.

Adding an arm is one `Prompt` (when it needs a prompt of its own) and one `Arm` here, plus its prompt
stage's method in `defs/assets.PROMPT_METHODS`; its evaluation, checks, status column, comparison and
plan follow from the entries.
"""

from __future__ import annotations

from dataclasses import dataclass

# The experiment file: observed, never materialized; every stage reads it.
FILE = "experiment_file"


@dataclass(frozen=True)
class Prompt:
    """A stage that optimizes a prompt."""

    asset: str
    stage: str  # its name in ledgers, call logs, usage and the plan
    column: str  # its header in `lsl status`
    model: str  # the role ("large" or "small") the optimized program runs on
    reads: tuple[str, ...] = ()  # the prompt assets it is made from, in pipeline order
    starts_from: str | None = None  # the prompt it changes (its metadata shows what it changed)


@dataclass(frozen=True)
class Arm:
    """A prompt as the comparison sees it: scored by its own evaluation on the large model."""

    name: str  # the arm in comparisons, exports and plots
    prompt: str  # the prompt asset its evaluation scores
    evaluation: str  # its evaluation's asset key (also the evaluation stage's name)
    column: str  # the evaluation's header in `lsl status`
    optimized_by: tuple[str, ...]  # the prompt assets whose calls count as this arm's optimization
    model: str = "large"  # every arm is evaluated on the large model


STAGE1 = Prompt("stage1_prompt", "stage1", "stage1", "large")
STAGE2 = Prompt(
    "stage2_hardened_prompt", "stage2", "stage2", "small", reads=(STAGE1.asset,), starts_from=STAGE1.asset
)
# FR-006: Stage 1's optimizer again with the calls Stage 1 and Stage 2 used (so it reads both).
BUDGET_MATCHED = Prompt(
    "budget_matched_prompt", "budget_matched", "budget_prompt", "large", reads=(STAGE1.asset, STAGE2.asset)
)
PROMPTS = (STAGE1, STAGE2, BUDGET_MATCHED)

BASELINE = Arm("baseline", STAGE1.asset, "baseline_evaluation", "baseline_eval", (STAGE1.asset,))
LSL = Arm("lsl", STAGE2.asset, "stage3_evaluation", "stage3_eval", (STAGE1.asset, STAGE2.asset))
BUDGET_MATCHED_ARM = Arm(
    "budget_matched",
    BUDGET_MATCHED.asset,
    "budget_matched_evaluation",
    "budget_eval",
    (BUDGET_MATCHED.asset,),
)
ARMS = (BASELINE, LSL, BUDGET_MATCHED_ARM)

# The paired differences of a comparison, (arm, baseline), in the order Holm's adjustment and tables use.
DIFFERENCES = (
    (LSL.name, BASELINE.name),
    (BUDGET_MATCHED_ARM.name, BASELINE.name),
    (LSL.name, BUDGET_MATCHED_ARM.name),
)

COMPARISON = "comparison"  # reads every prompt and every evaluation
# The campaign level: per campaign, after the comparisons of its experiments.
CAMPAIGN_SUMMARY = "campaign_summary"
TRANSFER_MATRIX = "transfer_matrix"
CAMPAIGN_ASSETS = (CAMPAIGN_SUMMARY, TRANSFER_MATRIX)

EVALUATIONS = tuple(arm.evaluation for arm in ARMS)
# Each stage asset of an experiment and the stage assets it reads, in pipeline order.
READS: dict[str, tuple[str, ...]] = {
    **{prompt.asset: prompt.reads for prompt in PROMPTS},
    **{arm.evaluation: (arm.prompt,) for arm in ARMS},
    COMPARISON: (*(prompt.asset for prompt in PROMPTS), *EVALUATIONS),
}
STAGES = tuple(READS)
# Each stage asset's header in `lsl status`.
COLUMNS = {
    **{prompt.asset: prompt.column for prompt in PROMPTS},
    **{arm.evaluation: arm.column for arm in ARMS},
    COMPARISON: COMPARISON,
}


def arm(name: str) -> Arm:
    """The arm of that name."""
    return next(a for a in ARMS if a.name == name)
