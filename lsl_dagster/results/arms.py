"""Each arm's own 95% interval, from the per-example scores its evaluation recorded (`lsl plot`'s error
bars)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lsl_dagster import graph
from lsl_dagster.method.evaluation import scores
from lsl_dagster.records import Comparison, EvaluationResult
from lsl_dagster.results.instance import ReportError, latest_value
from lsl_dagster.results.stats import bootstrap_mean_ci
from lsl_dagster.storage import outputs as storage


def arm_cis(
    instance: dg.DagsterInstance, comparison: Comparison, runs_dir: Path
) -> dict[str, tuple[float, float]]:
    """arm -> the bootstrap CI of its mean score, from the latest evaluation of the arm, refused when that
    evaluation is not the one the comparison was made from."""
    cis = {}
    for arm in comparison.arms:
        asset = graph.arm(arm.arm).evaluation
        result, _ = latest_value(instance, asset, comparison.experiment_id, EvaluationResult, runs_dir)
        try:
            rows = list(scores(storage.located(result.predictions_path, runs_dir)).values())
        except OSError as exc:
            raise ReportError(f"cannot read the predictions of {asset}: {exc}") from None
        per_example = [score for score in rows if score is not None]  # None: not scored
        mean = sum(per_example) / len(per_example) if per_example else 0.0
        if len(rows) != arm.n or abs(mean - arm.score) > 1e-9:
            raise ReportError(f"{asset} of {comparison.experiment_id} changed after its comparison was made")
        cis[arm.arm] = bootstrap_mean_ci(per_example)
    return cis
