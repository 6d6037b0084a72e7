"""Materialization metadata: what the asset catalog shows and the CLI reads back."""

from __future__ import annotations

import platform
from importlib.metadata import version
from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from lsl_dagster import CODE_VERSION
from lsl_dagster.method.prompts import render
from lsl_dagster.records import (
    CampaignSummary,
    Comparison,
    EvaluationResult,
    FormatCounts,
    Ledger,
    PromptCandidate,
    SequentialDecision,
    TransferMatrix,
)
from lsl_dagster.results.prompt_diff import diff_markdown, predictor_diffs
from lsl_dagster.results.text import (
    cost_field,
    interval_text,
    matrix_cell_text,
    p_text,
    sequential_text,
    signal_text,
)
from lsl_dagster.spec.experiment import SIMULATED, ExperimentSpec
from lsl_dagster.tasks.task import Task

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
                "cost_usd": cost_field(u.cost_usd),
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
        "budget": f"max_calls={ledger.max_calls}, cost allowance={cost_field(ledger.cost_allowance_usd)} USD",
    }
    if ledger.stop_reason:
        metadata["stop_reason"] = ledger.stop_reason
    return metadata


def environment(spec: ExperimentSpec, simulated: bool) -> dict[str, Any]:
    """Enough to reproduce the run: versions, models, seed and the experiment file's content hash.
    `simulated`: the spec names sim models or a response came from a simulator (over any transport)."""
    return {
        "simulated": SIMULATED if simulated else "no (real models)",
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
    banner = f"> **{SIMULATED}**\n\n" if candidate.simulated else ""
    metadata = {
        "prompt": MetadataValue.md(banner + render(candidate, task)),
        "optimizer": candidate.provenance.optimizer,
        "demos": sum(len(p.demos) for p in candidate.predictors.values()),
        **environment(spec, candidate.simulated),
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
    signal = candidate.provenance.small_model_signal
    if signal is not None:
        p = candidate.provenance
        metadata["small_model_signal"] = signal_text(signal, p.start_val_score, p.val_score)
        metadata["small_model_probe_score"] = MetadataValue.float(signal.probe_score)
        if signal.parse_share is not None:
            metadata["small_model_parse_share"] = MetadataValue.float(signal.parse_share)
        if signal.no_signal:
            metadata["no_signal"] = signal.no_signal
    return metadata


def format_metadata(counts: FormatCounts) -> dict[str, Any]:
    metadata: dict[str, Any] = counts.model_dump(exclude={"format_warning"})
    if counts.format_warning:
        metadata["format_warning"] = counts.format_warning
    return metadata


def hardening_metadata(stage1: PromptCandidate, stage2: PromptCandidate) -> dict[str, Any]:
    """What Stage 2 changed in the Stage 1 prompt, per predictor (instructions, field descriptions, demos)."""
    diffs = predictor_diffs(stage1, stage2)
    return {
        "changes": MetadataValue.md(diff_markdown(diffs)),
        "predictors_changed": sum(bool(diff) for diff in diffs.values()),
    }


def evaluation_metadata(result: EvaluationResult, spec: ExperimentSpec) -> dict[str, Any]:
    return {
        "score": MetadataValue.float(result.score),
        "n": result.n,
        "n_errors": result.n_errors,
        **format_metadata(result),
        "predictions": MetadataValue.path(result.predictions_path),
        **environment(spec, result.simulated),
        **ledger_metadata(result.ledger),
        **sequential_metadata(result.sequential),
    }


def sequential_metadata(decision: SequentialDecision | None) -> dict[str, Any]:
    """Where a sequential evaluation stopped and why; nothing for the fixed design."""
    if decision is None:
        return {}
    return {
        "sequential_examples": decision.examples,
        "sequential_of": decision.population,
        "sequential_stop": decision.reason,
        "sequential_requests": decision.requests,
        "sequential_fixed_requests": decision.fixed_requests,
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
                    "evaluation_cost_usd": cost_field(a.cost_usd),
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
                    "test": d.test,
                    "p": p_text(d.p_value, digits=4, missing="n/a"),
                    "p_holm": p_text(d.p_holm, digits=4, missing="n/a"),
                    "n": d.n,
                    "n_excluded": d.n_excluded,
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
                TableColumn("test", "string"),
                TableColumn("p", "string"),
                TableColumn("p_holm", "string", description="Holm-adjusted across the three differences"),
                TableColumn("n", "int", description="examples both arms scored"),
                TableColumn("n_excluded", "int", description="left out: a provider failure or program error"),
            ]
        ),
    )
    banner = f"**{SIMULATED}**\n\n" if comparison.simulated else ""
    warnings = [f"- **{a.arm}**: {a.format_warning}" for a in comparison.arms if a.format_warning]
    if comparison.stage2_unchanged:
        note = f"Stage 2 left the Stage 1 prompt {comparison.stage2_unchanged}"
        warnings.insert(0, f"- **LSL equals the baseline by construction**: {note}")
    verdicts = (
        banner
        + "\n".join([*(f"- {d.verdict}" for d in comparison.differences), *warnings])
        + "\n\n"
        + (
            "A difference is claimed only where its 95% CI excludes 0 and its Holm-adjusted p < 0.05."
            if comparison.sequential is None
            else sequential_text(comparison.sequential)
        )
    )
    total = [ledger.cost_usd for ledger in comparison.usage.values()]
    metadata: dict[str, Any] = {
        "arms": arms,
        "differences": differences,
        "verdicts": MetadataValue.md(verdicts),
        "total_calls": sum(ledger.calls for ledger in comparison.usage.values()),
        "total_cost_usd": "unknown" if None in total else MetadataValue.float(sum(c or 0.0 for c in total)),
        **environment(spec, comparison.simulated),
        **sequential_metadata(comparison.sequential),
    }
    for arm in comparison.arms:
        metadata[f"score_{arm.arm}"] = MetadataValue.float(arm.score)
    for d in comparison.differences:
        metadata[f"diff_{d.arm}_vs_{d.baseline}"] = MetadataValue.float(d.diff)
    return metadata


def campaign_metadata(summary: CampaignSummary) -> dict[str, Any]:
    cell = summary.cells[0]
    columns = ["cell", "seeds", *cell.arms, *cell.differences]
    rows = [
        TableRecord(
            {
                "cell": f"{c.task} / {c.pair} / {c.optimizer}",
                "seeds": len(c.experiments),
                **{arm: interval_text(value) for arm, value in c.arms.items()},
                **{name: interval_text(value) for name, value in c.differences.items()},
            }
        )
        for c in summary.cells
    ]
    banner = f"**{SIMULATED}**\n\n" if summary.simulated else ""
    return {
        "cells": MetadataValue.table(
            rows, schema=TableSchema(columns=[TableColumn(c, "string") for c in columns])
        ),
        "note": MetadataValue.md(
            banner + f"Means over the cell's seeds and examples: {summary.method}. Each difference's "
            "Holm adjustment is over every difference of the campaign; a difference is supported only "
            "where its interval excludes 0 and its Holm p < 0.05."
        ),
        "plot": MetadataValue.path(summary.plot_path),
        "experiments": sum(len(c.experiments) for c in summary.cells),
    }


def matrix_markdown(matrix: TransferMatrix) -> str:
    """One markdown table per difference: rows = large models, columns = small models."""
    names = list(dict.fromkeys(name for cell in matrix.cells for name in cell.differences))
    sections = [f"**{SIMULATED}**"] if matrix.simulated else []
    for name in names:
        lines = [f"**{name}**", "", "| large \\ small | " + " | ".join(matrix.small_models) + " |"]
        lines.append("|---" * (len(matrix.small_models) + 1) + "|")
        for large in matrix.large_models:
            cells = []
            for small in matrix.small_models:
                cell = matrix.cell(large, small)
                value = cell.differences.get(name) if cell else None
                cells.append("not run" if value is None else matrix_cell_text(value))
            lines.append(f"| {large} | " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    sections.append(
        "Mean paired difference over the pair's experiments (tasks x optimizers x seeds) and their "
        f"examples, each experiment a cluster: {matrix.method}; Holm p: adjusted over every cell and "
        "difference shown; n: experiments."
    )
    return "\n\n".join(sections)


def matrix_metadata(matrix: TransferMatrix) -> dict[str, Any]:
    names = list(dict.fromkeys(name for cell in matrix.cells for name in cell.differences))
    rows = [
        TableRecord(
            {
                "large_model": cell.large_model,
                "small_model": cell.small_model,
                "experiments": len(cell.experiments),
                **{name: interval_text(cell.differences[name]) for name in names if name in cell.differences},
            }
        )
        for cell in matrix.cells
    ]
    columns = [TableColumn("large_model", "string"), TableColumn("small_model", "string")]
    columns += [TableColumn("experiments", "int"), *(TableColumn(name, "string") for name in names)]
    return {
        "matrix": MetadataValue.md(matrix_markdown(matrix)),
        "cells": MetadataValue.table(rows, schema=TableSchema(columns=columns)),
        "plot": MetadataValue.path(matrix.plot_path),
        "simulated": SIMULATED if matrix.simulated else "no (real models)",
        "large_models": len(matrix.large_models),
        "small_models": len(matrix.small_models),
    }
