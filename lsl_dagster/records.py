"""What the stages produce: prompt candidates, evaluations, usage ledgers, comparisons and campaign
summaries (Pydantic v2, JSON only)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from lsl_dagster.spec.experiment import SpecVersion
from lsl_dagster.spec.strict import Slug, Strict


class PredictorPrompt(Strict):
    instructions: str
    field_descriptions: dict[str, str] = Field(default_factory=dict)
    demos: list[dict[str, Any]] = Field(default_factory=list)


class SmallModelSignal(Strict):
    """Stage 2's own view of the small model: the signal probe before it spent its budget (a few dev
    examples, llm.signal) and its replies over the whole stage."""

    model: str
    probe_n: int
    probe_failed: int  # unparseable or truncated replies among the probe's
    probe_score: float
    # The reason the probe found no signal (the stage continued under stage2.on_no_signal: warn).
    no_signal: str | None = None
    replies: int = 0  # the small model's replies the adapters parsed or failed to parse, whole stage
    unparseable: int = 0

    @property
    def parse_share(self) -> float | None:
        return (self.replies - self.unparseable) / self.replies if self.replies else None


class Provenance(Strict):
    stage: str
    optimizer: str
    model: str
    seed: int
    spec_hash: str
    # None in outputs made before the code version was recorded: they never pair with current ones.
    code_version: str | None = None
    parent: str | None = None
    # Validation scores of the program the optimizer started from and of the best one it found.
    start_val_score: float | None = None
    val_score: float | None = None
    stop_reason: str | None = None
    # Stage 2 only: True when hardening returned the parent's prompt as it was (stop_reason says why).
    unchanged: bool | None = None
    # Per model, how many of its replies in this stage DSPy's adapters could not parse (None: all parsed).
    unparseable_replies: str | None = None
    # Stage 2 only: the small model's signal probe and its parse share over the stage.
    small_model_signal: SmallModelSignal | None = None


class PromptCandidate(Strict):
    """Everything needed to rebuild the optimized program: per-predictor instructions, fields and demos."""

    experiment_id: Slug
    task: str
    predictors: dict[str, PredictorPrompt]
    provenance: Provenance
    ledger: Ledger
    simulated: bool

    @property
    def version(self) -> SpecVersion | None:
        p = self.provenance
        if p.code_version is None:
            return None
        return SpecVersion(spec_hash=p.spec_hash, code_version=p.code_version)

    @property
    def digest(self) -> str:
        """Identity of the prompt itself (what an evaluation of it records), not of its bookkeeping."""
        prompt = {name: p.model_dump(mode="json") for name, p in sorted(self.predictors.items())}
        return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


class ModelUsage(BaseModel):
    """What one model cost in one stage. cost_usd is None when any paid call had no known price."""

    calls: int = 0
    failed_attempts: int = 0
    cache_hits: int = 0
    # Cache hits that replayed a response an earlier (crashed) attempt of the stage paid for.
    replayed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    cost_source: Literal["provider", "price_table", "worst_case", "mixed", "unknown", "none"] = "none"
    latency_s: float = 0.0
    # A response said it came from a simulator (the sim server's `system_fingerprint`), whatever the name.
    simulated: bool = False

    @property
    def requests(self) -> int:
        """Requests sent to the provider, paid or failed."""
        return self.calls + self.failed_attempts


class Ledger(BaseModel):
    """Usage of one stage of one experiment, per model, and whether a budget stopped it."""

    stage: str
    max_calls: int | None = None
    # What max_calls counts: requests sent plus responses replayed from an earlier attempt.
    budget_used: int = 0
    cost_allowance_usd: float | None = None
    by_model: dict[str, ModelUsage] = {}
    stop_reason: str | None = None

    @property
    def calls(self) -> int:
        return sum(u.calls for u in self.by_model.values())

    @property
    def requests(self) -> int:
        return sum(u.requests for u in self.by_model.values())

    @property
    def cache_hits(self) -> int:
        return sum(u.cache_hits for u in self.by_model.values())

    @property
    def cost_usd(self) -> float | None:
        costs = [u.cost_usd for u in self.by_model.values()]
        return None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None))

    @property
    def simulated(self) -> bool:
        return any(u.simulated for u in self.by_model.values())


class FormatCounts(Strict):
    """How an arm's rows failed (`error_kind` in the predictions JSONL). Provider failures (e.g. a prompt
    too long for the context window) and program errors (the task's own code raised) are not scored: the
    score is the mean over the other rows, and the paired comparison leaves those examples out."""

    n_wrong: int = 0
    n_unparseable: int = 0  # the adapters could not parse a complete reply
    n_truncated: int = 0  # failed, with a reply cut off at max_tokens (finish_reason "length")
    n_adapter_fallbacks: int = 0  # ChatAdapter failed to parse and DSPy retried with JSONAdapter
    n_provider_failures: int = 0
    n_program_errors: int = 0
    # Set when unparseable + truncated rows exceed formats.WARNING_SHARE of the arm.
    format_warning: str | None = None


class SequenceBounds(Strict):
    """A paired difference's anytime-valid confidence sequence where a sequential evaluation stopped."""

    arm: str
    baseline: str
    n: int  # the examples both arms scored
    diff: float
    lower: float
    upper: float
    # How the sequence settled the difference: it excludes 0, it lies inside +-margin, or neither.
    settled: Literal["excludes_zero", "equivalent", "open"]


class SequentialDecision(Strict):
    """Where a sequential evaluation of an experiment's arms stopped, and why (method.sequential)."""

    key: str  # the spec version and the prompts it was decided for: a decision for other prompts is stale
    alpha: float  # family-wise; each sequence is at alpha / len(sequences)
    margin: float
    min_examples: int
    population: int  # the fixed design's examples per arm, which the rounds draw from in one random order
    finite: bool = False  # the sequences are about this test set's own mean difference (SequentialSpec)
    examples: int  # the examples every arm used
    rounds: int
    # settled: every difference is; examples: the population ran out first; budget: max_cost_usd could not
    # pay for the next round.
    reason: Literal["settled", "examples", "budget"]
    sequences: list[SequenceBounds]
    requests: int  # the answers the rounds used: paid for (now or by an earlier attempt) or from the cache
    # What the arms' evaluations would have needed on the whole population, at the rounds' calls per example.
    fixed_requests: int
    ledger: Ledger  # the rounds' usage (the evaluations then replay their prefix from the cache)


class EvaluationResult(FormatCounts):
    """Aggregates of one arm on the evaluation split; per-example rows live in the predictions JSONL."""

    experiment_id: Slug
    arm: str
    model: str
    split: str
    n: int
    score: float
    n_errors: int
    predictions_path: str  # relative to the runs directory (absolute in outputs made before that)
    ledger: Ledger
    simulated: bool
    # What the arm was made from (None in outputs made before versions were recorded: never paired).
    version: SpecVersion | None = None
    prompt_digest: str | None = None
    # With evaluation.sequential: where the rounds stopped (n is then its `examples`).
    sequential: SequentialDecision | None = None


class ArmSummary(FormatCounts):
    arm: str
    score: float
    n: int
    calls: int
    cost_usd: float | None
    optimization_calls: int | None = None
    # Its evaluation's per-example rows, as stored (the campaign pools them); None in older comparisons.
    predictions_path: str | None = None


class PairedDifference(Strict):
    arm: str
    baseline: str
    n: int  # the examples both arms scored
    # Examples left out because either arm did not score them (a provider failure or a program error).
    n_excluded: int = 0
    diff: float
    ci_low: float
    ci_high: float
    # Exact McNemar for 0/1 scores, else a paired t-test; None where the test is undefined. A sequential
    # evaluation's interval is its confidence sequence, which needs no p-value.
    test: Literal["mcnemar_exact", "paired_t", "confidence_sequence"]
    p_value: float | None
    # Holm-adjusted across the experiment's differences: what the verdict uses.
    p_holm: float | None
    verdict: str


class Comparison(Strict):
    experiment_id: Slug
    task: str
    large_model: str
    small_model: str
    arms: list[ArmSummary]
    differences: list[PairedDifference]
    usage: dict[str, Ledger]
    simulated: bool
    version: SpecVersion
    # Why Stage 2 left the Stage 1 prompt unchanged, when it did: then LSL equals the baseline by
    # construction and their difference says nothing about hardening.
    stage2_unchanged: str | None = None
    # Stage 2's small model: its parse share and probe, and its dev scores at the start and the end.
    stage2_signal: SmallModelSignal | None = None
    stage2_start_val_score: float | None = None
    stage2_val_score: float | None = None
    # With evaluation.sequential: where and why the rounds stopped; the differences' CIs are its sequences.
    sequential: SequentialDecision | None = None


class Interval(Strict):
    mean: float
    ci_low: float | None
    ci_high: float | None
    n: int  # the experiments (clusters) pooled
    n_examples: int | None = None  # the (paired) examples pooled over them
    # For differences: the bootstrap p of mean 0, and its Holm adjustment across every difference of the
    # campaign (summary) or of the matrix.
    p_value: float | None = None
    p_holm: float | None = None


class CellSummary(Strict):
    """One grid cell (task x model pair x optimizer) across its seeds."""

    task: str
    pair: str
    large_model: str
    small_model: str
    optimizer: str
    experiments: list[str]
    arms: dict[str, Interval]
    differences: dict[str, Interval]


class CampaignSummary(Strict):
    campaign: Slug
    cells: list[CellSummary]
    plot_path: str  # relative to the runs directory (absolute in outputs made before that)
    simulated: bool
    method: str  # how the intervals were computed (results.stats.CLUSTER_METHOD)


class MatrixCell(Strict):
    """One (large, small) pair of a campaign: LSL's differences pooled over its tasks, optimizers and
    seeds, each experiment one replicate."""

    large_model: str
    small_model: str
    experiments: list[str]
    differences: dict[str, Interval]


class TransferMatrix(Strict):
    """Rows = large models, columns = small models: does hardening on the small one transfer?"""

    campaign: Slug
    large_models: list[str]
    small_models: list[str]
    cells: list[MatrixCell]
    plot_path: str  # relative to the runs directory, like CampaignSummary's
    simulated: bool
    method: str  # how the intervals were computed, like CampaignSummary's

    def cell(self, large: str, small: str) -> MatrixCell | None:
        return next((c for c in self.cells if (c.large_model, c.small_model) == (large, small)), None)
