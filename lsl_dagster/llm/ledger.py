"""The one accounting layer: every provider request is reserved against the budgets, then recorded.

`Meter` is thread-safe and lives for one stage; `CallLog` is the experiment's durable, append-only record
of every request sent.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsl_dagster.records import Ledger, ModelUsage


class BudgetExhausted(BaseException):
    """A budget ran out. A BaseException so that optimizers' `except Exception` cannot swallow it."""


class CallLog:
    """Append-only JSONL of every request sent to a provider, across all stages of one experiment.

    Each record is written (one `write` of one line to a file opened for appending) before the response it
    records can reach the response cache: after a kill -9, every response an experiment can replay has its
    cost in the log. A write to the page cache takes microseconds, against a provider's hundreds of ms.
    A process killed mid-write can leave a torn last line; readers skip a line without its newline.
    """

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)

    @staticmethod
    def read(path: Path) -> Iterator[dict[str, Any]]:
        if not path.exists():
            return
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.endswith("\n"):
                    yield json.loads(line)


@dataclass(frozen=True)
class MeterReading:
    """What a stage has used so far, for its progress lines."""

    calls: int  # what max_calls counts
    max_calls: int | None
    spent_usd: float
    cost_allowance_usd: float | None


@dataclass
class _Usage:
    calls: int = 0
    failed: int = 0
    hits: int = 0
    replayed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0
    latency: float = 0.0
    sources: frozenset[str] = frozenset()
    simulated: bool = False

    def add(self, record: dict[str, Any]) -> None:
        if not record["ok"]:
            self.failed += 1
            if record["cost_usd"] is not None:  # a timeout or garbled reply, at its worst-case cost
                self.cost += record["cost_usd"]
                self.sources |= {record["cost_source"]}
            return
        self.calls += 1
        self.simulated |= bool(record.get("simulated"))
        self.input_tokens += record["input_tokens"]
        self.output_tokens += record["output_tokens"]
        self.latency += record["latency_s"]
        if record["cost_usd"] is None:
            self.unpriced += 1
        else:
            self.cost += record["cost_usd"]
        self.sources |= {record["cost_source"]}

    def model_usage(self, simulated: bool = False) -> ModelUsage:
        known = self.sources - {"unknown"}
        source = (
            "none"
            if not self.sources
            else "unknown"
            if not known
            else (next(iter(known)) if len(self.sources) == 1 else "mixed")
        )
        return ModelUsage(
            calls=self.calls,
            failed_attempts=self.failed,
            cache_hits=self.hits,
            replayed=self.replayed,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=None if self.unpriced else round(self.cost, 10),
            cost_source=source,
            latency_s=round(self.latency, 6),
            simulated=self.simulated or simulated,
        )


def spent_usd(records: Iterable[dict[str, Any]]) -> float:
    """What the logged requests cost, including failed ones that may have been billed (at their
    worst-case cost); unpriced ones count as zero (a budget then refuses to start)."""
    return sum(r.get("cost_usd") or 0.0 for r in records)  # stage events carry no cost


class Meter:
    """Budgets and usage of one stage.

    `max_calls` caps the stage's work: requests sent to the provider (retries included) plus responses
    replayed from an earlier attempt of the stage (a crashed run being resumed), so a resumed stage
    makes the same decisions as an uninterrupted one; repeats within one attempt are DSPy cache hits and
    free. `cost_allowance_usd` caps what the stage may still spend of the experiment's max_cost_usd; each
    request first reserves its worst-case cost, so concurrent requests cannot jointly overshoot. Usage
    includes what earlier attempts of the stage paid (`prior`, from the call log).
    """

    def __init__(
        self,
        stage: str,
        *,
        max_calls: int | None,
        cost_allowance_usd: float | None,
        log: CallLog | None = None,
        prior: Iterable[dict[str, Any]] = (),
    ):
        self.stage = stage
        self.max_calls = max_calls
        self.cost_allowance_usd = cost_allowance_usd
        self.stop_reason: str | None = None
        self.cost_stopped = False  # stopped by its share of max_cost_usd (not by max_calls)
        self._log = log
        self._lock = threading.Condition()
        self._usage: dict[str, _Usage] = {}
        self._used = 0
        self._spent = 0.0
        self._reserved = 0.0
        self._in_flight = 0
        self._closed = False
        self._halted: BaseException | None = None
        self._simulated: set[str] = set()
        # Called after each call settles or replays, outside the lock: a progress ticker's wake-up, which
        # must not block (no I/O), since it runs on the calling thread.
        self.on_change: Callable[[], None] | None = None
        for record in prior:
            self._usage.setdefault(record["model"], _Usage()).add(record)

    def remaining_calls(self) -> int | None:
        with self._lock:
            return None if self.max_calls is None else max(0, self.max_calls - self._used)

    def halt(self, error: BaseException) -> None:
        """Refuse every further request with `error`: threads an optimizer left running must not keep
        spending, and whichever thread reaches the stage first reports the real cause."""
        with self._lock:
            self.stop_reason = self.stop_reason or str(error)
            self._halted = self._halted or error

    def close(self) -> None:
        """The stage has ended: a thread still running must not send anything more."""
        with self._lock:
            self._closed = True

    def _check_call(self) -> None:
        """Refuse a call (under the lock) when the stage has ended, stopped or used max_calls."""
        if self._closed:
            raise BudgetExhausted(f"{self.stage} has ended")
        if self._halted is not None:
            raise type(self._halted)(*self._halted.args)
        if self.stop_reason is not None:
            raise BudgetExhausted(self.stop_reason)
        if self.max_calls is not None and self._used >= self.max_calls:
            self.stop_reason = f"{self.stage}: max_calls={self.max_calls} reached"
            raise BudgetExhausted(self.stop_reason)

    def replay(self, model: str) -> None:
        """A response an earlier attempt of this stage paid for, served from the cache: free, but the
        same work as then, so it counts against max_calls as it did then."""
        with self._lock:
            self._check_call()
            self._used += 1
            usage = self._usage.setdefault(model, _Usage())
            usage.hits += 1
            usage.replayed += 1
        self._changed()

    def reserve(self, model: str, worst_cost_usd: float | None) -> None:
        with self._lock:
            self._check_call()
            if self.cost_allowance_usd is not None:
                if worst_cost_usd is None:
                    raise BudgetExhausted(
                        f"{self.stage}: {model} has no known price, so max_cost_usd cannot hold"
                    )
                # Reservations of calls in flight are released (mostly unspent) when they settle: wait for
                # them rather than refuse a call the allowance can still pay for.
                while (
                    self._spent + self._reserved + worst_cost_usd > self.cost_allowance_usd
                    and self._spent + worst_cost_usd <= self.cost_allowance_usd
                    and self._in_flight > 0
                ):
                    self._lock.wait()
                    self._check_call()
                if self._spent + self._reserved + worst_cost_usd > self.cost_allowance_usd:
                    self.cost_stopped = True
                    self.stop_reason = (
                        f"{self.stage}: max_cost_usd reached (spent ${self._spent:.4f} of an allowance of "
                        f"${self.cost_allowance_usd:.4f}; the next request could cost up to "
                        f"${worst_cost_usd:.4f})"
                    )
                    raise BudgetExhausted(self.stop_reason)
                self._reserved += worst_cost_usd
            self._used += 1
            self._in_flight += 1

    def settle(
        self,
        model: str,
        worst_cost_usd: float | None,
        *,
        ok: bool,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float | None = None,
        cost_source: str = "unknown",
        latency_s: float = 0.0,
        error: str | None = None,
        simulated: bool = False,
    ) -> None:
        record = {
            "stage": self.stage,
            "model": model,
            "ok": ok,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost_usd,
            "cost_source": cost_source,
            "latency_s": round(latency_s, 6),
            "error": error,
            "simulated": simulated,
            "t": round(time.time(), 3),
        }
        with self._lock:
            if self.cost_allowance_usd is not None and worst_cost_usd is not None:
                self._reserved -= worst_cost_usd
            self._spent += cost_usd or 0.0
            self._usage.setdefault(model, _Usage()).add(record)
            self._in_flight -= 1
            self._lock.notify_all()
        if self._log is not None:
            self._log.append(record)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def reading(self) -> MeterReading:
        with self._lock:
            return MeterReading(self._used, self.max_calls, self._spent, self.cost_allowance_usd)

    def simulated_models(self, models: Iterable[str]) -> None:
        """Models a simulator answered for earlier in the experiment: a stage served from the cache alone
        still knows its responses were simulated."""
        with self._lock:
            self._simulated.update(models)

    def cache_hit(self, model: str) -> None:
        """A repeat of a request made earlier in this attempt: free and not counted against max_calls."""
        with self._lock:
            self._usage.setdefault(model, _Usage()).hits += 1

    def wait_idle(self, timeout_s: float = 120.0) -> bool:
        """Wait for requests still in flight (threads an optimizer abandoned) so the ledger is complete."""
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)

    def ledger(self) -> Ledger:
        with self._lock:
            return Ledger(
                stage=self.stage,
                max_calls=self.max_calls,
                budget_used=self._used,
                cost_allowance_usd=self.cost_allowance_usd,
                by_model={
                    model: usage.model_usage(simulated=model in self._simulated)
                    for model, usage in sorted(self._usage.items())
                },
                stop_reason=self.stop_reason,
            )
