"""Stage 2's signal probe: before it spends its budget, does the small model give the optimizer anything
to learn from? Mostly unparseable replies or a dev score of 0 mean every proposal would score the same."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import dspy

from lsl_dagster.llm.provider import ConfigError
from lsl_dagster.llm.structured import ModelAdapter
from lsl_dagster.method.evaluation import evaluate
from lsl_dagster.method.run import StageRun
from lsl_dagster.records import SmallModelSignal
from lsl_dagster.tasks.task import Example, Task

# Above this share of unparseable or truncated replies, a score measures formatting, not the prompt.
NO_SIGNAL_SHARE = 0.5


class NoSignal(ConfigError):
    """Stage 2 stopped before spending its budget: the small model gave no signal (stage2.on_no_signal)."""


def probe(program: dspy.Module, task: Task, examples: Sequence[Example], run: StageRun) -> SmallModelSignal:
    """Score `program` on the small model over `examples` (within the stage's budget and cache: the
    optimizer's own first evaluation of them replays for free) and say whether there is a signal."""
    spec = run.spec.small_model
    with tempfile.TemporaryDirectory() as scratch, dspy.context(lm=run.lm("small"), adapter=ModelAdapter()):
        totals = evaluate(
            program, task, examples, threads=run.threads("small"), out=Path(scratch) / "p.jsonl"
        )
    failed = totals.kinds["unparseable"] + totals.kinds["truncated"]
    signal = SmallModelSignal(
        model=spec.model, probe_n=totals.n, probe_failed=failed, probe_score=totals.score
    )
    if failed / totals.n > NO_SIGNAL_SHARE:
        cause = f"{failed} of {totals.n} replies unparseable or truncated at max_tokens"
        fix = (
            "raise max_tokens or declare the label fields' choices in the task"
            if spec.structured_outputs
            else "set structured_outputs: true (and the server's dialect) or adapter: two_step"
        )
    elif totals.score == 0:
        cause = f"every reply scored 0 on {totals.n} dev examples"
        fix = "check its replies and the task's labels, or use a stronger model"
    else:
        return signal
    reason = (
        f"no signal for Stage 2: small model {spec.model}: {cause}, dev score {totals.score:.2f}; "
        f"{fix} on small_model (or stage2.on_no_signal: warn to run anyway)"
    )
    return signal.model_copy(update={"no_signal": reason})
