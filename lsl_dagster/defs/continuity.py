"""Is the state a worker is about to use the one the experiment's earlier stages used?

An experiment's call log and response cache live in the runs directory or in PostgreSQL (LSL_CACHE_URL,
see lsl_dagster.llm.state). A worker set up differently from the others (no LSL_CACHE_URL, another database,
a runs directory on a disk the others do not see) would find an empty cache, pay again for every request
and split the call log. The Dagster instance, which every worker shares, says which run materialized each
stage of the experiment; the state that run used ends with that stage's marker for that run. A stage
refuses to start, before any call, when its state lacks a marker of a materialized stage. The content is
compared, not a location: a runs directory moved whole (LSL_RUNS_DIR) still holds its markers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from lsl_dagster.results.instance import latest_materializations

MATERIALIZED = "materialized"  # the call-log event that ends a stage which completed
# A stage's materialization metadata: where its call log and cache were, and its name in the call log.
STATE_KEY = "experiment_state"
STAGE_KEY = "experiment_stage"


@dataclass(frozen=True)
class Earlier:
    """A stage of the experiment as the instance last recorded it materialized."""

    asset: str
    stage: str
    run_id: str
    state: str  # where its call log and response cache were (no secret)


class ForeignState(Exception):
    """This worker's experiment state does not hold what earlier stages of the experiment paid for."""

    def __init__(self, message: str, here: str, earlier: Sequence[Earlier]):
        super().__init__(message)
        self.here = here
        self.earlier = earlier


def earlier_stages(instance: dg.DagsterInstance, experiment_id: str, assets: Iterable[str]) -> list[Earlier]:
    """Of these assets, the stages whose newest materialization of the experiment recorded where its state
    was and under which stage name (older ones did not, and are not checked; nor is the experiment file,
    which is observed, never materialized).

    A stage checks itself and the stages it reads: each of those checked the ones it read when it ran, and
    a call log only grows, so a state that holds their markers holds every earlier stage's (one query per
    asset, 12 per experiment; checking every stage of the experiment would be 36)."""
    found = []
    for asset in assets:
        record = latest_materializations(instance, asset, [experiment_id]).get(experiment_id)
        if record is None:
            continue
        metadata = record.asset_materialization.metadata
        if STATE_KEY in metadata and STAGE_KEY in metadata:
            state, stage = str(metadata[STATE_KEY].value), str(metadata[STAGE_KEY].value)
            found.append(Earlier(asset, stage, record.run_id, state))
    return found


def marker(stage: str, run_id: str | None) -> dict[str, Any]:
    """The call-log record that ends a completed stage, naming the run when there is one."""
    record: dict[str, Any] = {"stage": stage, "event": MATERIALIZED}
    if run_id is not None:
        record["run_id"] = run_id
    return record


def check_state(
    experiment_id: str, records: Iterable[dict[str, Any]], earlier: Sequence[Earlier], here: str
) -> None:
    """Raise ForeignState when the state's call log (`records`) has no marker of a stage the instance
    says was materialized: its responses are not in this state's cache."""
    ended = {(r["stage"], r.get("run_id")) for r in records if r.get("event") == MATERIALIZED}
    missing = [e for e in earlier if (e.stage, e.run_id) not in ended]
    if not missing:
        return
    stages = "; ".join(f"{e.asset} (materialized by run {e.run_id[:8]}, state in {e.state})" for e in missing)
    raise ForeignState(
        f"Refused before any call: this worker keeps the call log and response cache of {experiment_id} in "
        f"{here}, which does not hold what earlier runs of the experiment paid for: {stages}. Run here, "
        "each of those requests would be paid again and the call log would be split. Give this worker the "
        "same LSL_CACHE_URL as the workers that ran them (or the same runs directory, LSL_RUNS_DIR, on a "
        "disk they share). If the experiment's state was deleted on purpose, wipe those materializations "
        f"of partition {experiment_id} (UI: the asset, Wipe materializations) to start it afresh.",
        here,
        missing,
    )
