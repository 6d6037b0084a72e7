"""A running stage, told as it goes: a line every tenth of its work (calls of max_calls, or examples of the
evaluation) or every few seconds, whichever comes first, with its cost of its allowance, the best
validation score so far or the examples done, and an ETA; and a last line when it ends.

The lines are written by a thread of their own: the LLM calls' threads only wake it (the meter's
`on_change`, `example_done`), never wait for a log write.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lsl_dagster.llm.ledger import Meter
from lsl_dagster.results.text import progress_text

INTERVAL_S = 5.0  # at least one line this often while anything changes
STEPS = 10  # and one line per tenth of the stage's work


class StageProgress:
    """What the method knows beyond the meter: the best validation score so far (optimizers), examples
    done of the total (evaluations). Thread-safe; `on_change` as the meter's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.best_score: float | None = None
        self.examples_done = 0
        self.examples_total: int | None = None
        self.on_change: Callable[[], None] | None = None

    def offer_score(self, value: float) -> None:
        with self._lock:
            if self.best_score is None or value > self.best_score:
                self.best_score = value
        self._changed()

    def example_done(self) -> None:
        with self._lock:
            self.examples_done += 1
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class Ticker:
    """Writes a stage's progress lines with `log` from its own thread (see the module's docstring)."""

    def __init__(
        self,
        stage: str,
        meter: Meter,
        progress: StageProgress,
        log: Callable[[str], None],
        *,
        simulated: bool,
        interval_s: float = INTERVAL_S,
    ):
        self.stage, self.meter, self.progress, self.log = stage, meter, progress, log
        self.simulated = simulated
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._told: tuple[int, int] = (0, 0)  # (calls, examples) of the last line
        self._thread = threading.Thread(target=self._run, name=f"progress-{stage}", daemon=True)

    def start(self) -> None:
        self.meter.on_change = self.progress.on_change = self._wake.set
        self._thread.start()

    def stop(self, outcome: str) -> None:
        """End the thread, then write the stage's last line (`outcome`: done, failed)."""
        self.meter.on_change = self.progress.on_change = None
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self.log(self._line(outcome))

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            if self._due(now - last >= self.interval_s):
                self.log(self._line(None))
                last = now

    def _due(self, timed_out: bool) -> bool:
        calls, examples = self.meter.reading().calls, self.progress.examples_done
        told_calls, told_examples = self._told
        if (calls, examples) == self._told:
            return False
        max_calls, total = self.meter.max_calls, self.progress.examples_total
        step_calls = math.ceil(max_calls / STEPS) if max_calls else None
        step_examples = math.ceil(total / STEPS) if total else None
        due = (
            timed_out
            or (step_calls is not None and calls - told_calls >= step_calls)
            or (step_examples is not None and examples - told_examples >= step_examples)
        )
        if due:
            self._told = (calls, examples)
        return due

    def _line(self, outcome: str | None) -> str:
        reading = self.meter.reading()
        elapsed = time.monotonic() - self._started
        done, total = self.progress.examples_done, self.progress.examples_total
        # At this pace: examples left (evaluations), else calls left of max_calls (an optimizer may stop
        # sooner, so the ETA is an upper estimate).
        eta: float | None = None
        if outcome is None and total and done:
            eta = elapsed / done * (total - done)
        elif outcome is None and total is None and reading.max_calls and reading.calls:
            eta = elapsed / reading.calls * (reading.max_calls - reading.calls)
        return progress_text(
            self.stage,
            calls=reading.calls,
            max_calls=reading.max_calls,
            spent_usd=reading.spent_usd,
            allowance_usd=reading.cost_allowance_usd,
            best_score=self.progress.best_score,
            examples=(done, total) if total is not None else None,
            eta_s=eta,
            elapsed_s=elapsed,
            outcome=outcome,
            simulated=self.simulated,
        )


@contextmanager
def ticking(
    stage: str, meter: Meter, progress: StageProgress, log: Callable[[str], None] | None, *, simulated: bool
) -> Iterator[None]:
    """Progress lines while the block runs (none without `log`), and a last one when it ends."""
    if log is None:
        yield
        return
    ticker = Ticker(stage, meter, progress, log, simulated=simulated)
    ticker.start()
    try:
        yield
    except BaseException:
        ticker.stop("failed")
        raise
    ticker.stop("done")
