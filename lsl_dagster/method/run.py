"""What a running stage uses: the experiment's spec, its meter and its models, metered and cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import dspy

from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.llm.provider import TaskLoader
from lsl_dagster.llm.structured import adapter_for
from lsl_dagster.method.progress import StageProgress
from lsl_dagster.spec.experiment import ExperimentSpec, ModelSpec


@dataclass
class StageRun:
    """What a running stage uses: its meter and the experiment's models, metered and cached."""

    spec: ExperimentSpec
    meter: Meter
    models: LanguageModels
    task: TaskLoader | None = None
    # The best score and examples done, for the stage's progress lines (method.progress).
    progress: StageProgress = field(default_factory=StageProgress)
    _lms: dict[ModelSpec, dspy.LM] = field(default_factory=dict)

    def lm(self, role: Literal["large", "small"]) -> dspy.LM:
        # One LM per model and stage, so its max_concurrency holds however many roles it plays.
        spec = self.spec.model(role)
        if spec not in self._lms:
            lm = self._lms[spec] = self.models.lm(spec, self.meter, self.spec.seed, self.task)
            # Stored first: a large model with two_step extracts with itself.
            extraction = self.lm("large") if spec.output_adapter == "two_step" else None
            lm.adapter = adapter_for(spec, extraction)
        return self._lms[spec]

    def threads(self, role: Literal["large", "small"]) -> int:
        return self.spec.model(role).max_concurrency

    def close(self) -> None:
        """DSPy leaves a custom engine's connections to its owner: close them with the stage."""
        for lm in self._lms.values():
            lm.engine.close()
