"""`lsl` views over the Dagster instance beyond the results table: what hardening changed (`lsl results
--prompts`) and a campaign's transfer matrix (`lsl campaign matrix NAME`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from lsl_dagster import graph
from lsl_dagster.records import PromptCandidate, TransferMatrix
from lsl_dagster.results.instance import latest_value
from lsl_dagster.results.prompt_diff import diff_text, predictor_diffs
from lsl_dagster.results.text import matrix_cell_text, table
from lsl_dagster.spec.experiment import SIMULATED as LABEL


def prompt_changes(instance: dg.DagsterInstance, experiments: Sequence[str], runs_dir: Path) -> str:
    """Per experiment and predictor: the unified diff from the Stage 1 prompt to the hardened one."""
    sections = []
    for experiment in experiments:
        stage1, _ = latest_value(instance, graph.STAGE1.asset, experiment, PromptCandidate, runs_dir)
        stage2, _ = latest_value(instance, graph.STAGE2.asset, experiment, PromptCandidate, runs_dir)
        label = " (sim)" if stage1.simulated or stage2.simulated else ""
        sections.append(
            f"== {experiment}{label}: what Stage 2 changed in the Stage 1 prompt\n"
            + diff_text(predictor_diffs(stage1, stage2))
        )
    return "\n\n".join(sections)


def matrix_table(matrix: TransferMatrix) -> str:
    """One block per difference: rows = large models, columns = small models, mean [95% CI] p Holm p."""
    names = list(dict.fromkeys(name for cell in matrix.cells for name in cell.differences))
    lines = [
        f"transfer matrix of campaign {matrix.campaign}: LSL's paired differences over the examples of "
        "each pair's experiments (tasks x optimizers x seeds, each a cluster; n: experiments); "
        + matrix.method
    ]
    for name in names:
        rows = [[name, *matrix.small_models]]
        for large in matrix.large_models:
            row = [large]
            for small in matrix.small_models:
                cell = matrix.cell(large, small)
                value = cell.differences.get(name) if cell else None
                row.append("not run" if value is None else matrix_cell_text(value))
            rows.append(row)
        lines += ["", table(rows)]
    if matrix.simulated:
        lines.append(LABEL)
    return "\n".join(lines)
