"""A campaign's own max_cost_usd, held across all its experiments (which may run at the same time).

Each stage of a campaign's experiment takes its allowance under the campaign's file lock: what the cap
has left after everything the experiments' call logs record and every allowance still held by a running
stage (a file per stage, removed when it ends; one whose process died is ignored). The stage then spends
within that allowance (its Meter), so concurrent experiments cannot jointly overshoot the campaign's cap.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from lsl_dagster.llm.ledger import CallLog, spent_usd
from lsl_dagster.storage.files import atomic_write_text


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def allowance(cap: float, spent: float, held: float, wanted: float | None) -> float:
    """What a stage may hold of a campaign's cap: up to `wanted` (all when None) of what is left after
    what was spent and what other running stages hold."""
    left = max(0.0, cap - spent - held)
    return left if wanted is None else min(wanted, left)


@contextmanager
def campaign_allowance(
    runs_dir: Path, campaign: str, cap: float, experiments: list[str], holder: str, wanted: float | None
) -> Iterator[float]:
    """Hold up to `wanted` (all that is left when None) of the campaign's cap for one stage; yields it."""
    held_dir = runs_dir / campaign / "budget"
    held_dir.mkdir(parents=True, exist_ok=True)
    mine = held_dir / f"{holder}.json"
    with (held_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            spent = sum(spent_usd(CallLog.read(runs_dir / e / "calls.jsonl")) for e in experiments)
            held = 0.0
            for path in held_dir.glob("*.json"):
                with suppress(OSError, ValueError, KeyError):
                    record = json.loads(path.read_text())
                    if path != mine and pid_alive(record["pid"]):
                        held += record["usd"]
            granted = allowance(cap, spent, held, wanted)
            atomic_write_text(mine, json.dumps({"usd": granted, "pid": os.getpid()}))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        yield granted
    finally:
        mine.unlink(missing_ok=True)  # what the stage spent is in its call log now
