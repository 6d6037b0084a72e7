"""Materialization metadata: what the asset catalog shows and the CLI reads back."""

from __future__ import annotations

import platform
from importlib.metadata import version
from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from lsl_dagster import CODE_VERSION
from lsl_dagster.models import (
    CampaignSummary,
    Comparison,
    EvaluationResult,
    ExperimentSpec,
    FormatCounts,
    Interval,
    Ledger,
    PromptCandidate,
)
from lsl_dagster.program import render
from lsl_dagster.sim import LABEL
from lsl_dagster.tasks import Task

_FORMAT_COLUMNS = [name for name in FormatCounts.model_fields if name.startswith("n_")]
_USAGE_SCHEMA = TableSchema(
    columns=[
        TableColumn("model", "string"),
        TableColumn("calls", "int"),
        TableColumn("failed_attempts", "int"),
        TableColumn("cache_hits", "int"),
        TableColumn("replayed", "int"),
        TableColumn("input_tokens", "int"),
        TableColumn("output_tokens", "int"),
        TableColumn("cost_usd", "string"),
        TableColumn("cost_source", "string"),
        TableColumn("latency_s", "float"),
    ]
)


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.6f}"


def ledger_metadata(ledger: Ledger) -> dict[str, Any]:
    rows = [
        TableRecord(
            {
                "model": model,
                "calls": u.calls,
                "failed_attempts": u.failed_attempts,
                "cache_hits": u.cache_hits,
                "replayed": u.replayed,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cost_usd": _cost(u.cost_usd),
                "cost_source": u.cost_source,
                "latency_s": round(u.latency_s, 3),
            }
        )
        for model, u in ledger.by_model.items()
    ]
    metadata: dict[str, Any] = {
        "calls": ledger.calls,
        "requests": ledger.requests,
        "cache_hits": ledger.cache_hits,
        "budget_used": ledger.budget_used,
        "cost_usd": MetadataValue.float(ledger.cost_usd) if ledger.cost_usd is not None else "unknown",
        "usage": MetadataValue.table(rows, schema=_USAGE_SCHEMA),
        "budget": f"max_calls={ledger.max_calls}, cost allowance={_cost(ledger.cost_allowance_usd)} USD",
    }
    if ledger.stop_reason:
        metadata["stop_reason"] = ledger.stop_reason
    return metadata


def environment(spec: ExperimentSpec) -> dict[str, Any]:
    """Enough to reproduce the run: versions, models, seed and the experiment file's content hash."""
    return {
        "simulated": LABEL if spec.simulated else "no (real models)",
        "models": f"large={spec.large_model.model}, small={spec.small_model.model}",
        "seed": spec.seed,
        "spec_hash": spec.spec_hash,
        "code_version": CODE_VERSION,
        "versions": (
            f"python {platform.python_version()}, dagster {version('dagster')}, dspy {version('dspy')}, "
            f"lsl_dagster {version('lsl_dagster')}"
        ),
    }


def prompt_metadata(candidate: PromptCandidate, task: Task, spec: ExperimentSpec) -> dict[str, Any]:
    banner = f"> **{LABEL}**\n\n" if candidate.simulated else ""
    metadata = {
        "prompt": MetadataValue.md(banner + render(candidate, task)),
        "optimizer": candidate.provenance.optimizer,
        "demos": sum(len(p.demos) for p in candidate.predictors.values()),
        **environment(spec),
        **ledger_metadata(candidate.ledger),
    }
    for key in ("start_val_score", "val_score"):
        value = getattr(candidate.provenance, key)
        if value is not None:
            metadata[key] = MetadataValue.float(value)
    if candidate.provenance.unchanged is not None:
        metadata["prompt_change"] = "unchanged" if candidate.provenance.unchanged else "changed"
    if candidate.provenance.stop_reason:  # the ledger's budget stop, or why the prompt is unchanged
        metadata["stop_reason"] = candidate.provenance.stop_reason
    if candidate.provenance.unparseable_replies:
        metadata["unparseable_replies"] = candidate.provenance.unparseable_replies
    return metadata


def format_metadata(counts: FormatCounts) -> dict[str, Any]:
    metadata: dict[str, Any] = counts.model_dump(exclude={"format_warning"})
    if counts.format_warning:
        metadata["format_warning"] = counts.format_warning
    return metadata


def evaluation_metadata(result: EvaluationResult, spec: ExperimentSpec) -> dict[str, Any]:
    return {
        "score": MetadataValue.float(result.score),
        "n": result.n,
        "n_errors": result.n_errors,
        **format_metadata(result),
        "predictions": MetadataValue.path(result.predictions_path),
        **environment(spec),
        **ledger_metadata(result.ledger),
    }


def comparison_metadata(comparison: Comparison, spec: ExperimentSpec) -> dict[str, Any]:
    arms = MetadataValue.table(
        [
            TableRecord(
                {
                    "arm": a.arm,
                    "score": round(a.score, 4),
                    "n": a.n,
                    "optimization_calls": a.optimization_calls if a.optimization_calls is not None else -1,
                    "evaluation_calls": a.calls,
                    "evaluation_cost_usd": _cost(a.cost_usd),
                    **{name: getattr(a, name) for name in _FORMAT_COLUMNS},
                }
            )
            for a in comparison.arms
        ],
        schema=TableSchema(
            columns=[
                TableColumn("arm", "string"),
                TableColumn("score", "float"),
                TableColumn("n", "int"),
                TableColumn("optimization_calls", "int"),
                TableColumn("evaluation_calls", "int"),
                TableColumn("evaluation_cost_usd", "string"),
                *(TableColumn(name, "int") for name in _FORMAT_COLUMNS),
            ]
        ),
    )
    differences = MetadataValue.table(
        [
            TableRecord(
                {
                    "comparison": f"{d.arm} - {d.baseline}",
                    "diff": round(d.diff, 4),
                    "ci_low": round(d.ci_low, 4),
                    "ci_high": round(d.ci_high, 4),
                    "mcnemar_p": "n/a" if d.mcnemar_p is None else f"{d.mcnemar_p:.4g}",
                    "n": d.n,
                }
            )
            for d in comparison.differences
        ],
        schema=TableSchema(
            columns=[
                TableColumn("comparison", "string"),
                TableColumn("diff", "float"),
                TableColumn("ci_low", "float"),
                TableColumn("ci_high", "float"),
                TableColumn("mcnemar_p", "string"),
                TableColumn("n", "int"),
            ]
        ),
    )
    banner = f"**{LABEL}**\n\n" if comparison.simulated else ""
    warnings = [f"- **{a.arm}**: {a.format_warning}" for a in comparison.arms if a.format_warning]
    if comparison.stage2_unchanged:
        note = f"Stage 2 left the Stage 1 prompt {comparison.stage2_unchanged}"
        warnings.insert(0, f"- **LSL equals the baseline by construction**: {note}")
    verdicts = banner + "\n".join([*(f"- {d.verdict}" for d in comparison.differences), *warnings])
    total = [ledger.cost_usd for ledger in comparison.usage.values()]
    metadata: dict[str, Any] = {
        "arms": arms,
        "differences": differences,
        "verdicts": MetadataValue.md(verdicts),
        "total_calls": sum(ledger.calls for ledger in comparison.usage.values()),
        "total_cost_usd": "unknown" if None in total else MetadataValue.float(sum(c or 0.0 for c in total)),
        **environment(spec),
    }
    for arm in comparison.arms:
        metadata[f"score_{arm.arm}"] = MetadataValue.float(arm.score)
    for d in comparison.differences:
        metadata[f"diff_{d.arm}_vs_{d.baseline}"] = MetadataValue.float(d.diff)
    return metadata


def _interval(value: Interval) -> str:
    if value.ci_low is None or value.ci_high is None:
        return f"{value.mean:+.3f} (n={value.n}, no CI)"
    return f"{value.mean:+.3f} [{value.ci_low:+.3f}, {value.ci_high:+.3f}]"


def campaign_metadata(summary: CampaignSummary) -> dict[str, Any]:
    cell = summary.cells[0]
    columns = ["cell", "seeds", *cell.arms, *cell.differences]
    rows = [
        TableRecord(
            {
                "cell": f"{c.task} / {c.pair} / {c.optimizer}",
                "seeds": len(c.experiments),
                **{arm: _interval(value) for arm, value in c.arms.items()},
                **{name: _interval(value) for name, value in c.differences.items()},
            }
        )
        for c in summary.cells
    ]
    banner = f"**{LABEL}**\n\n" if summary.simulated else ""
    return {
        "cells": MetadataValue.table(
            rows, schema=TableSchema(columns=[TableColumn(c, "string") for c in columns])
        ),
        "note": MetadataValue.md(
            banner + "Means across seeds with 95% Student-t intervals; a difference is "
            "supported only where its interval excludes 0."
        ),
        "plot": MetadataValue.path(summary.plot_path),
        "experiments": sum(len(c.experiments) for c in summary.cells),
    }
