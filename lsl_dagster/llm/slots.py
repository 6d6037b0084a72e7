"""Taking one of a pool's slots when the lock primitive (a file lock, a PostgreSQL advisory lock) can only
wait for one lock at a time: see LocalState.slot and PostgresState.slot."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def first_free(take: Callable[[int], bool], pool: str, limit: int) -> int:
    """The first slot `take` gets, trying all of them in turn until one is free. Only a step beyond the
    limit ever waits here (Dagster's claim lets one through now and then), so a short pause between
    rounds costs nothing in the usual case; no lock primitive waits for any one of several."""
    waiting = False
    while True:
        for i in range(limit):
            if take(i):
                return i
        if not waiting:
            log.info("waiting for a slot of the %s pool (limit %d)", pool, limit)
            waiting = True
        time.sleep(0.1)
