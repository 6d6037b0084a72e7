"""What hardening changed: a per-predictor unified diff (difflib) of two prompts' instructions, field
descriptions and demos."""

from __future__ import annotations

import difflib
import json

from lsl_dagster.records import PredictorPrompt, PromptCandidate


def _lines(prompt: PredictorPrompt | None) -> list[str]:
    if prompt is None:
        return []
    lines = ["[instructions]", *prompt.instructions.splitlines()]
    fields = prompt.field_descriptions.items()
    lines += ["[field descriptions]", *(f"{name}: {desc}" for name, desc in fields)]
    lines.append(f"[demos: {len(prompt.demos)}]")
    # One line per demo, keys sorted: a demo added, dropped or edited shows as exactly that line.
    lines += [f"demo {i}: {json.dumps(demo, sort_keys=True)}" for i, demo in enumerate(prompt.demos, 1)]
    return lines


def predictor_diffs(
    before: PromptCandidate, after: PromptCandidate, labels: tuple[str, str] = ("stage1", "stage2")
) -> dict[str, str]:
    """Predictor name -> unified diff from `before` to `after` ("" when that predictor is unchanged)."""
    names = list(dict.fromkeys([*before.predictors, *after.predictors]))
    return {
        name: "\n".join(
            difflib.unified_diff(
                _lines(before.predictors.get(name)),
                _lines(after.predictors.get(name)),
                fromfile=f"{labels[0]}/{name}",
                tofile=f"{labels[1]}/{name}",
                lineterm="",
            )
        )
        for name in names
    }


def diff_markdown(diffs: dict[str, str]) -> str:
    sections = []
    for name, diff in diffs.items():
        body = f"```diff\n{diff}\n```" if diff else "_unchanged_"
        sections.append(f"### Predictor `{name}`\n\n{body}")
    return "\n\n".join(sections)


def diff_text(diffs: dict[str, str]) -> str:
    return "\n".join(f"predictor {name}:\n{diff or '  (unchanged)'}" for name, diff in diffs.items())
