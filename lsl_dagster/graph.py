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
    optional: bool = False  # built only for experiments that list its arm in `arms:`


@dataclass(frozen=True)
class Arm:
    """A prompt as the comparison sees it: scored by its own evaluation on the large model."""

    name: str  # the arm in comparisons, exports and plots
    prompt: str  # the prompt asset its evaluation scores
    evaluation: str  # its evaluation's asset key (also the evaluation stage's name)
    column: str  # the evaluation's header in `lsl status`
    optimized_by: tuple[str, ...]  # the prompt assets whose calls count as this arm's optimization
    model: str = "large"  # every arm is evaluated on the large model
    optional: bool = False  # an experiment has it only when its file lists it in `arms:`


STAGE1 = Prompt("stage1_prompt", "stage1", "stage1", "large")
STAGE2 = Prompt(
    "stage2_hardened_prompt", "stage2", "stage2", "small", reads=(STAGE1.asset,), starts_from=STAGE1.asset
)
# FR-006: Stage 1's optimizer again with the calls Stage 1 and Stage 2 used (so it reads both).
BUDGET_MATCHED = Prompt(
    "budget_matched_prompt", "budget_matched", "budget_prompt", "large", reads=(STAGE1.asset, STAGE2.asset)
)
# GEPA's Table 2 setting: Stage 1's optimizer and budget on the small model alone.
SMALL_OPTIMIZED = Prompt("small_optimized_prompt", "small_optimized", "small_prompt", "small", optional=True)
PROMPTS = (STAGE1, STAGE2, BUDGET_MATCHED)  # every experiment's (the optional ones: ALL_PROMPTS)
ALL_PROMPTS = (*PROMPTS, SMALL_OPTIMIZED)

BASELINE = Arm("baseline", STAGE1.asset, "baseline_evaluation", "baseline_eval", (STAGE1.asset,))
LSL = Arm("lsl", STAGE2.asset, "stage3_evaluation", "stage3_eval", (STAGE1.asset, STAGE2.asset))
BUDGET_MATCHED_ARM = Arm(
    "budget_matched",
    BUDGET_MATCHED.asset,
    "budget_matched_evaluation",
    "budget_eval",
    (BUDGET_MATCHED.asset,),
)
SMALL_OPTIMIZED_ARM = Arm(
    "small_optimized",
    SMALL_OPTIMIZED.asset,
    "small_optimized_evaluation",
    "small_eval",
    (SMALL_OPTIMIZED.asset,),
    optional=True,
)
ARMS = (BASELINE, LSL, BUDGET_MATCHED_ARM)  # every experiment's (the optional ones: ALL_ARMS)
ALL_ARMS = (*ARMS, SMALL_OPTIMIZED_ARM)
OPTIONAL_ARMS = tuple(a.name for a in ALL_ARMS if a.optional)  # the names `arms:` accepts

# The paired differences of a comparison, (arm, baseline), in the order Holm's adjustment and tables use.
DIFFERENCES = (
    (LSL.name, BASELINE.name),
    (BUDGET_MATCHED_ARM.name, BASELINE.name),
    (LSL.name, BUDGET_MATCHED_ARM.name),
)

# A sequential evaluation's rounds (evaluation.sequential): a stage, not an asset, run by the first of the
# experiment's evaluations; it scores every arm, and each evaluation then replays its prefix.
ROUNDS = "evaluation_rounds"

COMPARISON = "comparison"  # reads every prompt and every evaluation
# The campaign level: per campaign, after the comparisons of its experiments.
CAMPAIGN_SUMMARY = "campaign_summary"
TRANSFER_MATRIX = "transfer_matrix"
CAMPAIGN_ASSETS = (CAMPAIGN_SUMMARY, TRANSFER_MATRIX)


def arms_of(names: tuple[str, ...] | list[str] = ()) -> tuple[Arm, ...]:
    """The arms of an experiment whose file lists these optional arms (`arms:`), in ALL_ARMS order."""
    return tuple(a for a in ALL_ARMS if not a.optional or a.name in names)


def prompts_of(names: tuple[str, ...] | list[str] = ()) -> tuple[Prompt, ...]:
    """The prompt stages of such an experiment, in pipeline order."""
    made = {a.prompt for a in arms_of(names)} | {r for p in ALL_PROMPTS for r in p.reads}
    return tuple(p for p in ALL_PROMPTS if not p.optional or p.asset in made)


def differences_of(names: tuple[str, ...] | list[str] = ()) -> tuple[tuple[str, str], ...]:
    """The paired differences of such an experiment's comparison: DIFFERENCES, then each optional arm
    against every arm before it, in the order Holm's adjustment and tables use."""
    arms = arms_of(names)
    extra = tuple((arm.name, other.name) for i, arm in enumerate(arms) if arm.optional for other in arms[:i])
    return (*DIFFERENCES, *extra)


def reads_of(names: tuple[str, ...] | list[str] = ()) -> dict[str, tuple[str, ...]]:
    """Each stage asset of such an experiment and the stage assets it reads, in pipeline order."""
    prompts, arms = prompts_of(names), arms_of(names)
    return {
        **{prompt.asset: prompt.reads for prompt in prompts},
        **{arm.evaluation: (arm.prompt,) for arm in arms},
        COMPARISON: (*(prompt.asset for prompt in prompts), *(arm.evaluation for arm in arms)),
    }


def waits_for(names: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The prompt assets every evaluation of such an experiment runs after: all of them, so that whichever
    evaluation runs a sequential evaluation's rounds finds every arm's prompt made."""
    return tuple(prompt.asset for prompt in prompts_of(names))


def stages_of(names: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The stage assets of such an experiment, in pipeline order."""
    return tuple(reads_of(names))


EVALUATIONS = tuple(arm.evaluation for arm in ARMS)
ALL_EVALUATIONS = tuple(arm.evaluation for arm in ALL_ARMS)
READS = reads_of()  # an experiment without optional arms (ALL_READS: with every one)
STAGES = tuple(READS)
ALL_READS = reads_of(OPTIONAL_ARMS)
ALL_STAGES = tuple(ALL_READS)
ALL_DIFFERENCES = differences_of(OPTIONAL_ARMS)
# Each stage asset's header in `lsl status`.
COLUMNS = {
    **{prompt.asset: prompt.column for prompt in ALL_PROMPTS},
    **{arm.evaluation: arm.column for arm in ALL_ARMS},
    COMPARISON: COMPARISON,
}


def arm(name: str) -> Arm:
    """The arm of that name."""
    return next(a for a in ALL_ARMS if a.name == name)
