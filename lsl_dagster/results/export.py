"""The export schema (`lsl export`): one row per experiment and arm, as CSV, JSON or Parquet."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsl_dagster import graph
from lsl_dagster.records import Comparison, FormatCounts
from lsl_dagster.storage.files import atomic_writer

# Export columns with their Parquet types, explicit so that a column empty in every row keeps its type.
COLUMNS = {
    **dict.fromkeys(["experiment_id", "task", "large_model", "small_model"], "string"),
    **{"simulated": "bool", "arm": "string", "score": "float64"},
    **dict.fromkeys(["n", "optimization_calls", "evaluation_calls"], "int64"),
    **dict.fromkeys(["evaluation_cost_usd", "diff_vs_baseline", "ci_low", "ci_high"], "float64"),
    **{"test": "string", "p_value": "float64", "p_holm": "float64"},
    **{"verdict": "string", "total_calls": "int64", "total_cost_usd": "float64"},
    **dict.fromkeys(
        [
            "n_wrong",
            "n_unparseable",
            "n_truncated",
            "n_adapter_fallbacks",
            "n_provider_failures",
            "n_program_errors",
        ],
        "int64",
    ),
    "format_warning": "string",
    "stage2_unchanged": "string",
    **dict.fromkeys(["stage2_parse_share", "stage2_probe_score"], "float64"),
    **dict.fromkeys(["stage2_start_val_score", "stage2_val_score"], "float64"),
    "stage2_no_signal": "string",
}
DIFFERENCE_FIELDS = {"ci_low", "ci_high", "test", "p_value", "p_holm", "verdict"}
FORMATS = ("csv", "json", "parquet")


def export_rows(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """One row per (experiment, arm): the arm, its difference to the baseline, the experiment's totals."""
    rows = []
    for c in comparisons:
        diffs = {d.arm: d for d in c.differences if d.baseline == graph.BASELINE.name}
        costs = [ledger.cost_usd for ledger in c.usage.values()]
        signal = c.stage2_signal
        stage2 = {
            "stage2_parse_share": signal and signal.parse_share,
            "stage2_probe_score": signal and signal.probe_score,
            "stage2_no_signal": signal and signal.no_signal,
        }
        for arm in c.arms:
            d = diffs.get(arm.arm)
            rows.append(
                {
                    **c.model_dump(exclude={"arms", "differences", "usage"}),
                    **arm.model_dump(include={"arm", "score", "n", "optimization_calls"}),
                    **arm.model_dump(include=set(FormatCounts.model_fields)),
                    "evaluation_calls": arm.calls,
                    "evaluation_cost_usd": arm.cost_usd,
                    "diff_vs_baseline": None if d is None else d.diff,
                    **(d.model_dump(include=DIFFERENCE_FIELDS) if d else {}),
                    "total_calls": sum(ledger.calls for ledger in c.usage.values()),
                    "total_cost_usd": None if None in costs else sum(costs),
                    **stage2,
                }
            )
    return [{column: row.get(column) for column in COLUMNS} for row in rows]


def write_rows(rows: list[dict[str, Any]], fmt: str, path: Path) -> None:
    """The rows in one of FORMATS, replacing `path` whole."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([(column, pa.type_for_alias(kind)) for column, kind in COLUMNS.items()])
        table = pa.Table.from_pylist(rows, schema=schema)
        with atomic_writer(path, "wb") as out:
            pq.write_table(table, out)
    else:
        with atomic_writer(path) as out:
            if fmt == "json":
                json.dump(rows, out, indent=2)
            else:  # None becomes an empty field; floats are written in full (repr) precision
                writer = csv.DictWriter(out, fieldnames=list(COLUMNS))
                writer.writeheader()
                writer.writerows(rows)
