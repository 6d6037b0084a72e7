"""Numbers and tables as text: how the CLI, the plan, metadata and plots write costs, p-values and
intervals, in one place."""

from __future__ import annotations

from collections.abc import Sequence

from lsl_dagster.records import Interval, PairedDifference, SequentialDecision, SmallModelSignal


def usd(value: float | None) -> str:
    """A cost for people: dollars to 4 decimals, or "unknown" (an unpriced model)."""
    return "unknown" if value is None else f"${value:.4f}"


def cost_field(value: float | None) -> str:
    """A cost in a metadata table's string column: 6 decimals, no unit, or "unknown"."""
    return "unknown" if value is None else f"{value:.6f}"


def p_text(value: float | None, *, digits: int = 3, missing: str = "-") -> str:
    return missing if value is None else f"{value:.{digits}g}"


def bounds(low: float, high: float) -> str:
    """A 95% CI: [low, high], signed."""
    return f"[{low:+.3f}, {high:+.3f}]"


def difference_text(d: PairedDifference, sep: str = " ") -> str:
    """A paired difference and its CI: +0.100 [+0.020, +0.180]."""
    return f"{d.diff:+.3f}{sep}{bounds(d.ci_low, d.ci_high)}"


def interval_text(value: Interval) -> str:
    """mean [95% CI], and for a difference its raw and Holm-adjusted p-values side by side."""
    if value.ci_low is None or value.ci_high is None:
        text = f"{value.mean:+.3f} (n={value.n}, no CI)"
    else:
        text = f"{value.mean:+.3f} {bounds(value.ci_low, value.ci_high)}"
    if value.p_value is not None or value.p_holm is not None:
        p, p_holm = (p_text(v, digits=4, missing="n/a") for v in (value.p_value, value.p_holm))
        text += f" p={p} Holm p={p_holm}"
    return text


def matrix_cell_text(value: Interval) -> str:
    return interval_text(value) + ("" if value.ci_low is None else f" (n={value.n})")


def table(rows: Sequence[Sequence[str]], min_widths: Sequence[int] = (), rule: bool = False) -> str:
    """Left-aligned columns two spaces apart, each as wide as its widest cell (or its minimum width); with
    `rule`, a line of dashes under the header."""
    minimum = [*min_widths, *[0] * (len(rows[0]) - len(min_widths))]
    widths = [max(m, *(len(row[i]) for row in rows)) for i, m in enumerate(minimum)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def progress_text(
    stage: str,
    *,
    calls: int,
    max_calls: int | None,
    spent_usd: float,
    allowance_usd: float | None,
    best_score: float | None,
    examples: tuple[int, int] | None,
    eta_s: float | None,
    elapsed_s: float,
    outcome: str | None,
    simulated: bool,
) -> str:
    """One progress line of a running stage (method.progress): 'progress stage1: 40/80 calls, $0.0120 of
    $1.0000, best val score 0.750, ETA 6s'; when it has ended, its outcome and time instead of the ETA."""
    parts = [f"{calls}/{max_calls} calls" if max_calls is not None else f"{calls} calls"]
    parts.append(usd(spent_usd) + ("" if allowance_usd is None else f" of {usd(allowance_usd)}"))
    if examples is not None:
        parts.insert(0, f"{examples[0]}/{examples[1]} examples")
    if best_score is not None:
        parts.append(f"best val score {best_score:.3f}")
    if outcome is not None:
        parts.append(f"{outcome} in {duration(elapsed_s)}")
    elif eta_s is not None:
        parts.append(f"ETA {duration(eta_s)}")
    return f"progress {stage}: " + ", ".join(parts) + (" (simulated)" if simulated else "")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def signal_text(signal: SmallModelSignal, start: float | None, end: float | None) -> str:
    """Stage 2's small model: its parse share over the stage, its probe, its dev scores start and end."""
    share = signal.parse_share
    parsed = (
        "no replies parsed by an adapter"
        if share is None
        else f"{share:.0%} of {signal.replies} replies parsed"
    )
    probe = f"probe {signal.probe_failed} of {signal.probe_n} unparseable or truncated"
    return (
        f"Stage 2 small model {signal.model}: {parsed}; {probe}, dev score {signal.probe_score:.2f}; "
        f"dev score {_score(start)} -> {_score(end)}"
    )


def sequential_text(decision: SequentialDecision) -> str:
    """Where and why a sequential evaluation stopped, what it saved, and what its intervals are."""
    why = {
        "settled": "every paired difference was settled",
        "examples": "the examples ran out before every difference was settled",
        "budget": "money, not evidence, ended it: max_cost_usd could not pay for the next round at its "
        "worst case",
    }[decision.reason]
    saved = decision.fixed_requests - decision.requests
    k = len(decision.sequences)
    return (
        f"Sequential evaluation: stopped at {decision.examples} of {decision.population} examples per arm "
        f"after {decision.rounds} rounds ({why}); {decision.requests} evaluation requests against "
        f"~{decision.fixed_requests} for the fixed design (~{saved} saved). Each CI is an anytime-valid "
        f"{100 * (1 - decision.alpha / k):.3g}% confidence sequence (hedged betting, Waudby-Smith & Ramdas "
        f"2024; alpha {decision.alpha:g} family-wise over {k} differences), valid at this data-dependent "
        "stop; no p-value is reported."
        + (
            " The sequences are about these test examples' own mean difference (finite population), not "
            "new examples."
            if decision.finite
            else ""
        )
    )
