"""The sim models behind an OpenAI-compatible HTTP server on 127.0.0.1. A test double, not an LLM service.

Everything it returns is SIMULATED (see `sim.engine`): replies are a deterministic function of (seed,
model, messages). It exists to exercise real HTTP clients offline: keep-alive, authentication, latency,
concurrency limits and the failures a provider produces (rate limits, 5xx, hangs, garbage, dropped
connections), injected deterministically by a `FaultPlan` (`sim.faults`). Here: the server's lifecycle,
counters, holds and command line; the HTTP handling is `sim.http`'s.

    with SimServer(faults={2: "429"}).start() as server:
        httpx.post(f"{server.url}/chat/completions", json={"model": "sim-large", "messages": [...]})

or from a shell: `python -m lsl_dagster.sim.server --port 8765 --data-dir data`.

The sim knows no task by itself: given answer keys (`answer_keys=`, or every task under `--data-dir`),
it plays those tasks' examples with its task-agnostic model of skill (see `sim.engine`).

`SimServer(dialect="llama-cpp")` answers like llama-cpp-python's server with a small model that never
emits its end-of-sequence token: it ignores `max_completion_tokens`, reads only `max_tokens`, and without
one keeps generating until its context window (`context_tokens`, default 4096) is full (finish_reason
"length"). In any dialect, a prompt longer than a set `context_tokens` is refused with a 400
`context_length_exceeded`, as real servers do.
`unformatted_rate` is the share of replies (drawn per request) written as plain prose, ignoring the output
format DSPy's adapters asked for, as a small model often does.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lsl_dagster.sim.answer_key import AnswerKey
from lsl_dagster.sim.constrained import constrained, requested_schema
from lsl_dagster.sim.dialects import KEY_HEADERS, DialectError, llama_cpp_reply, token_limit, unformatted
from lsl_dagster.sim.engine import respond
from lsl_dagster.sim.faults import FAULT_KINDS, RETRIABLE_FAULTS, FaultPlan, draw
from lsl_dagster.sim.http import RequestError, SimHTTPServer
from lsl_dagster.sim.keys import data_dir_keys
from lsl_dagster.sim.replies import Reply
from lsl_dagster.sim.tiers import TIERS
from lsl_dagster.spec.experiment import SIMULATED

DIALECTS = ("openai", "llama-cpp")
_COUNTERS = (
    "requests",
    "served",
    "rejected",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "in_flight",
    "max_in_flight",
    "held",
    "truncated",
)


class SimServer:
    """The sim tiers as an OpenAI-compatible server with counters and fault injection (a test double).

    Counters (requests, served, rejected, faults, prompt_tokens, completion_tokens, cost_usd, in_flight,
    max_in_flight) are attributes, also served by GET /stats; `requests` numbers the chat requests for the
    fault plan, and `served` counts only 200 replies with a valid completion body.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        latency_s: float = 0.0,
        report_cost: bool = True,
        api_key: str | None = None,
        faults: Mapping[int, str] | None = None,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = RETRIABLE_FAULTS,
        fault_seed: int = 0,
        retry_after_s: float = 1.0,
        hang_s: float = 30.0,
        allow_remote: bool = False,
        dialect: str = "openai",
        context_tokens: int | None = None,
        unformatted_rate: float = 0.0,
        answer_keys: Sequence[AnswerKey] = (),
        reject_structured: bool = False,
    ):
        if not allow_remote and not _is_loopback(host):
            raise ValueError(f"refusing to bind the sim server to non-loopback host {host!r}")
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}: known are {', '.join(DIALECTS)}")
        if context_tokens is None and dialect == "llama-cpp":
            context_tokens = 4096
        self.dialect, self.context_tokens = dialect, context_tokens
        if not 0.0 <= unformatted_rate <= 1.0:
            raise ValueError(f"unformatted_rate must be in [0, 1], got {unformatted_rate}")
        self.unformatted_rate = unformatted_rate
        # Refuse every constrained-decoding field, as a server without support does (sim.constrained).
        self.reject_structured = reject_structured
        # The gold labels the sim may read (it is a test double): without them it knows no task.
        self.answer_keys = tuple(answer_keys)
        self.host, self.port, self.seed = host, port, seed
        self.latency_s, self.report_cost, self.api_key = latency_s, report_cost, api_key
        self.plan = FaultPlan(dict(faults or {}), fault_rate, tuple(fault_kinds), fault_seed)
        self.retry_after_s, self.hang_s = retry_after_s, hang_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._httpd: SimHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def __repr__(self) -> str:
        # Never show the key.
        return f"SimServer(url={self.url if self._httpd else None!r}, seed={self.seed}, plan={self.plan})"

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> SimServer:
        if self._httpd is None:
            self._stop.clear()
            self._httpd = SimHTTPServer((self.host, self.port), self)
            self.port = self._httpd.server_address[1]
            # A short poll interval keeps stop() (and so each test's server) fast.
            serve = self._httpd.serve_forever
            self._thread = threading.Thread(target=serve, args=(0.05,), name="sim-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stop.set()  # wakes handlers sleeping in a hang or latency
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    # --- counters ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero the counters; the fault plan's request numbering starts again at 1."""
        with self._lock:
            self.requests = self.served = self.rejected = 0
            self.prompt_tokens = self.completion_tokens = 0
            self.cost_usd = 0.0
            self.in_flight = self.max_in_flight = self.held = 0
            self.truncated = 0
            self.faults: dict[str, int] = {}
            # How many requests carried each output-token limit, in the field this server's dialect reads
            # (None: no limit): what a client's max_tokens setting actually reached.
            self.token_limits: dict[int | None, int] = {}
            # The constrained-decoding fields of each request that had any, as sent.
            self.schemas_seen: list[dict[str, Any]] = []
            # How often each distinct request (model, messages, seed) was answered: repeats are re-paid calls.
            self.served_requests: dict[str, int] = {}
            # Answers to a request already answered, by the request's temperature, and what they cost.
            self.repeats_by_temperature: dict[str, int] = {}
            self.repeat_cost_usd = 0.0
            # The credential headers each model request carried (tests check where keys went).
            self.headers_seen: list[dict[str, str]] = []

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**{name: getattr(self, name) for name in _COUNTERS}, "faults": dict(self.faults)}

    def begin(self) -> int:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.requests

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def count_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] = self.faults.get(kind, 0) + 1

    def hold(self) -> None:
        """Stop answering: new and latency-delayed requests wait (counted in `held`) until release();
        stop() drops them unanswered, so they are never served (never "paid")."""
        with self._lock:  # admit() decides under the same lock, so none is let through after this
            self._open.clear()

    def freeze(self) -> None:
        """hold(), returning once every request in flight is held: from then on nothing is answered."""
        self.hold()
        while True:
            with self._lock:
                if self.in_flight == self.held:
                    return
            time.sleep(0.005)

    def release(self) -> None:
        self._open.set()

    def stopped(self, wait_s: float) -> bool:
        """Wait up to `wait_s` seconds; True (at once) when the server stops meanwhile."""
        return self._stop.wait(wait_s)

    def admit(self) -> bool:
        # Leaving `held` and deciding happen in one locked step: a request counted as held is never
        # answered after freeze() has seen it held.
        with self._lock:
            self.held += 1
        while True:
            with self._lock:
                if self._stop.is_set() or self._open.is_set():
                    self.held -= 1
                    return not self._stop.is_set()
            self._open.wait(0.02)

    def generate(
        self, n: int, model: str, system: str | None, messages: list[tuple[str, str]], seed: int, body: dict
    ) -> tuple[Reply, str]:
        """The sim's reply (to the n-th request) and its finish_reason under the output-token limit, in
        this server's dialect (see `sim.dialects`)."""
        try:
            limit = token_limit(body, self.dialect)
            schema = requested_schema(body, self.dialect, self.reject_structured)
        except DialectError as exc:
            raise RequestError(exc.status, str(exc)) from None
        # The sim stops at the limit itself; llama-cpp's small model ignores it (it is repeated below).
        openai = self.dialect == "openai"
        reply = respond(
            model, system, messages, seed, keys=self.answer_keys, max_tokens=limit if openai else None
        )
        if self.context_tokens is not None and reply.input_tokens > self.context_tokens:
            raise RequestError(
                400,
                f"This model's maximum context length is {self.context_tokens} tokens, but the request has "
                f"{reply.input_tokens} input tokens",
                code="context_length_exceeded",
            )
        with self._lock:
            self.token_limits[limit] = self.token_limits.get(limit, 0) + 1
            if schema is not None:
                fields = ("response_format", "format", "guided_json")
                self.schemas_seen.append({name: body[name] for name in fields if name in body})
        if schema is not None:
            # The grammar ends the reply with the object: no prose, no rambling to the limit.
            reply = constrained(reply, schema[1])
            if limit is not None and reply.output_tokens > limit:
                return Reply(reply.text[: 4 * limit], reply.input_tokens, limit), "length"
            return reply, "stop"
        if self.unformatted_rate > 0 and draw(self.seed, n, "unformatted") < self.unformatted_rate:
            reply = unformatted(reply)
        if self.context_tokens is not None and self.dialect == "llama-cpp":
            return llama_cpp_reply(reply, limit, self.context_tokens), "length"
        if limit is not None and reply.output_tokens > limit:
            return Reply(reply.text[: 4 * limit], reply.input_tokens, limit), "length"
        return reply, reply.finish_reason

    def record_served(
        self, prompt_tokens: int, completion_tokens: int, tier: str, digest: str, finish: str = "stop"
    ) -> None:
        with self._lock:
            self.truncated += finish == "length"
            self.served_requests[digest] = self.served_requests.get(digest, 0) + 1
            self.served += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost_usd += TIERS[tier].price.cost(prompt_tokens, completion_tokens)

    def record_headers(self, headers: Mapping[str, str]) -> None:
        seen = {name: headers[name] for name in KEY_HEADERS.values() if headers.get(name) is not None}
        with self._lock:
            self.headers_seen.append(seen)

    def record_repeat(
        self, digest: str, temperature: Any, prompt_tokens: int, completion_tokens: int, tier: str
    ) -> None:
        with self._lock:
            if self.served_requests[digest] > 1:
                key = str(temperature)
                self.repeats_by_temperature[key] = self.repeats_by_temperature.get(key, 0) + 1
                self.repeat_cost_usd += TIERS[tier].price.cost(prompt_tokens, completion_tokens)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lsl_dagster.sim.server",
        description=f"Serve the sim models as an OpenAI-compatible API on 127.0.0.1. {SIMULATED}.",
    )
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0, help="default seed when a request has none")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each completion")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument(
        "--fault-kinds", default=",".join(RETRIABLE_FAULTS), help=f"comma list from {','.join(FAULT_KINDS)}"
    )
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on a 429")
    parser.add_argument("--hang", type=float, default=30.0, help="seconds a 'hang' fault stalls")
    parser.add_argument("--no-cost", action="store_true", help="omit usage.cost from replies")
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default="openai",
        help="llama-cpp: read only max_tokens and, without it, generate until the context is full",
    )
    parser.add_argument(
        "--context", type=int, default=None, help="context window in tokens (llama-cpp default: 4096)"
    )
    parser.add_argument(
        "--unformatted-rate", type=float, default=0.0, help="share of replies that ignore the output format"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="answer the tasks under DATA_DIR/tasks (the sim reads their gold labels; else it knows none)",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="require the key held in this environment variable (never the key itself)",
    )
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is unset or empty")
    kinds = [kind.strip() for kind in args.fault_kinds.split(",") if kind.strip()]
    try:
        server = SimServer(
            port=args.port,
            seed=args.seed,
            latency_s=args.latency,
            report_cost=not args.no_cost,
            api_key=api_key,
            fault_rate=args.fault_rate,
            fault_kinds=kinds,
            fault_seed=args.fault_seed,
            retry_after_s=args.retry_after,
            hang_s=args.hang,
            dialect=args.dialect,
            context_tokens=args.context,
            unformatted_rate=args.unformatted_rate,
            answer_keys=data_dir_keys(args.data_dir) if args.data_dir else (),
        )
        server.start()
    except (ValueError, OSError) as exc:
        print(f"sim server: {exc}", file=sys.stderr)
        return 2
    print(f"sim server ({SIMULATED}) listening on {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
