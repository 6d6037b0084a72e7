"""The sim models behind an OpenAI-compatible HTTP server on 127.0.0.1. A test double, not an LLM service.

Everything it returns is SIMULATED (see `sim.engine`): replies are a deterministic function of (seed,
model, messages). It exists to exercise real HTTP clients offline: keep-alive, authentication, latency,
concurrency limits and the failures a provider produces (rate limits, 5xx, hangs, garbage, dropped
connections), injected deterministically by a `FaultPlan`. Stdlib only.

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
import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lsl_dagster.sim.dialects import (
    GEMINI_PATH,
    KEY_HEADERS,
    MESSAGES_PATHS,
    DialectError,
    parse_gemini,
    parse_messages,
    render_gemini,
    render_messages,
)
from lsl_dagster.sim.engine import FINGERPRINT, SIMULATED_HEADER, TIERS, AnswerKey, Reply, respond, tier_name
from lsl_dagster.sim.keys import data_dir_keys
from lsl_dagster.spec.experiment import SIMULATED
from lsl_dagster.tasks.task import TaskDataError

DIALECTS = ("openai", "llama-cpp")
FAULT_KINDS = ("429", "500", "502", "503", "hang", "malformed", "reset")
RETRIABLE_FAULTS = ("429", "500", "502", "503")
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MODEL_IDS = tuple(f"sim-{name}" for name in TIERS)
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


def _draw(*parts: object) -> float:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class FaultPlan:
    """Which fault (if any) the n-th chat request (1-based, counted by the server) gets.

    An explicit schedule wins; otherwise a fault is drawn with probability `rate`, its kind uniformly from
    `kinds`, both as a pure function of (seed, n), so a run is reproducible whatever the thread timing.
    """

    schedule: Mapping[int, str] = field(default_factory=dict)
    rate: float = 0.0
    kinds: tuple[str, ...] = RETRIABLE_FAULTS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = (set(self.schedule.values()) | set(self.kinds)) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}: known are {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")
        if self.rate > 0 and not self.kinds:
            raise ValueError("a fault rate needs at least one fault kind")

    def fault_for(self, n: int) -> str | None:
        if n in self.schedule:
            return self.schedule[n]
        if self.rate > 0 and _draw(self.seed, n, "fault") < self.rate:
            return self.kinds[int(_draw(self.seed, n, "kind") * len(self.kinds))]
        return None


class RequestError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def _error_body(message: str, type_: str, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _text(content: object) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        # Non-text parts (images, audio) carry nothing the sim models read.
        parts = [part for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "".join(str(part.get("text", "")) for part in parts)
    raise RequestError(400, "message content must be a string or a list of content parts")


def parse_chat(body: object) -> tuple[str, str | None, list[tuple[str, str]], int | None]:
    """(model, system, messages, seed) from an OpenAI chat request; RequestError(400) when malformed."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    model, messages, seed = body.get("model"), body.get("messages"), body.get("seed")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' must be a non-empty string")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(400, "'seed' must be an integer")
    if body.get("stream"):
        raise RequestError(400, "streaming is not supported by the sim server")
    system: str | None = None
    turns: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, "each message must be an object with a 'role'")
        role, text = message["role"], _text(message.get("content"))
        if role in ("system", "developer") and system is None:
            system = text
        else:
            turns.append((role, text))
    return model, system, turns, seed


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sim: SimServer):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or hung up mid-reply is business as usual for a fault-injecting server.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lsl-sim/1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed
    # ACK (~40 ms on Linux) and every call would pay that on top of the configured latency.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self._body() is None:
            return
        sim, path = self.server.sim, self.path.split("?", 1)[0]
        if not self._authorized():
            return
        if path in ("/v1/models", "/models"):
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "sim"} for name in MODEL_IDS]
            self._json(200, {"object": "list", "data": data})
        elif path == "/stats":
            self._json(200, sim.stats())
        else:
            self._json(404, _error_body(f"no route GET {path}", "invalid_request_error", "not_found"))

    def do_POST(self) -> None:
        raw = self._body()
        if raw is None:
            return
        path = self.path.split("?", 1)[0]
        if path in CHAT_PATHS:
            self._chat(raw)
        elif path in MESSAGES_PATHS or GEMINI_PATH.fullmatch(path):
            self._dialect(raw, path)
        elif not self._authorized():
            return
        elif path == "/reset":
            self.server.sim.reset()
            self._json(200, {"ok": True})
        else:
            self._json(404, _error_body(f"no route POST {path}", "invalid_request_error", "not_found"))

    def _body(self) -> bytes | None:
        """The request body; None (after answering and closing) when its length is unknown."""
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit() or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._json(411, _error_body("send a valid Content-Length", "invalid_request_error"))
            return None
        return self.rfile.read(int(length))

    def _authorized(self, count_as: str | None = None) -> bool:
        """True when no key is configured or the request carries it; otherwise answers 401."""
        key = self.server.sim.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return True
        if count_as:
            self.server.sim._count(count_as)
        self._json(401, _error_body("missing or invalid API key", "invalid_request_error", "invalid_api_key"))
        return False

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: object, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), headers)

    def _dialect(self, raw: bytes, path: str) -> None:
        """Anthropic messages or Gemini generateContent: the same sim models in another wire format
        (no fault injection; the OpenAI route has that)."""
        sim = self.server.sim
        n = sim._begin()
        gemini = GEMINI_PATH.fullmatch(path)
        dialect = "gemini" if gemini else "anthropic"
        try:
            sim._record_headers(self.headers)
            given = self.headers.get(KEY_HEADERS[dialect], "")
            if sim.api_key is not None and not hmac.compare_digest(given.encode(), sim.api_key.encode()):
                sim._count("rejected")
                self._json(401, {"error": {"type": "authentication_error", "message": "invalid api key"}})
                return
            try:
                body = json.loads(raw)
                if gemini:
                    model = gemini["model"]
                    system, turns, temperature = parse_gemini(body)
                else:
                    model, system, turns, temperature = parse_messages(body)
                tier = tier_name(model)
            except DialectError as exc:
                raise RequestError(exc.status, str(exc)) from None
            except ValueError as exc:
                raise RequestError(400 if isinstance(exc, json.JSONDecodeError) else 404, str(exc)) from None
            if sim.latency_s > 0 and sim._stop.wait(sim.latency_s):
                self._drop()
                return
            reply = respond(model, system, turns, sim.seed, keys=sim.answer_keys)
            digest = hashlib.sha256(json.dumps([model, system, turns, sim.seed]).encode()).hexdigest()
            sim._record_served(reply.input_tokens, reply.output_tokens, tier, digest)
            sim._record_repeat(digest, temperature, reply.input_tokens, reply.output_tokens, tier)
            rendered = render_gemini(model, reply) if gemini else render_messages(n, model, reply)
            self._json(200, {**rendered, "system_fingerprint": FINGERPRINT}, {SIMULATED_HEADER: "1"})
        except RequestError as exc:
            sim._count("rejected")
            self._json(exc.status, {"error": {"type": "invalid_request_error", "message": exc.message}})
        finally:
            sim._end()

    def _chat(self, raw: bytes) -> None:
        sim = self.server.sim
        n = sim._begin()
        try:
            sim._record_headers(self.headers)
            if not self._authorized(count_as="rejected"):
                return
            fault = sim.plan.fault_for(n)
            if fault is not None:
                sim._count_fault(fault)
                if fault != "hang":
                    self._fault(fault, n)
                    return
                if sim._stop.wait(sim.hang_s):
                    self._drop()
                    return
            try:
                body = json.loads(raw)
            except ValueError:
                raise RequestError(400, "request body is not valid JSON") from None
            model, system, messages, seed = parse_chat(body)
            try:
                tier = tier_name(model)
            except ValueError:
                raise RequestError(
                    404,
                    f"The model {model!r} does not exist (known: {', '.join(MODEL_IDS)})",
                    code="model_not_found",
                ) from None
            if sim.latency_s > 0 and sim._stop.wait(sim.latency_s):
                self._drop()
                return
            if not sim._admit():
                self._drop()
                return
            seed = sim.seed if seed is None else seed
            reply, finish = sim._generate(n, model, system, messages, seed, body)
            payload = sim._completion(n, model, tier, reply, finish)
            # Counted before the write, so a client that reads the reply and then the stats sees it.
            digest = hashlib.sha256(json.dumps([model, system, messages, seed]).encode()).hexdigest()
            sim._record_served(reply.input_tokens, reply.output_tokens, tier, digest, finish)
            sim._record_repeat(digest, body.get("temperature"), reply.input_tokens, reply.output_tokens, tier)
            self._json(200, payload, {SIMULATED_HEADER: "1"})
        except RequestError as exc:
            sim._count("rejected")
            self._json(exc.status, _error_body(exc.message, exc.type, exc.code))
        finally:
            sim._end()

    def _fault(self, kind: str, n: int) -> None:
        sim = self.server.sim
        if kind == "429":
            body = _error_body("Rate limit reached (simulated)", "rate_limit_error", "rate_limit_exceeded")
            self._json(429, body, {"Retry-After": f"{sim.retry_after_s:g}"})
        elif kind in ("500", "502", "503"):
            self._json(int(kind), _error_body(f"simulated upstream error {kind}", "server_error", int(kind)))
        elif kind == "malformed":
            message = {"role": "assistant", "content": "..."}
            whole = json.dumps(
                {
                    "id": f"chatcmpl-sim-{n}",
                    "object": "chat.completion",
                    "created": 0,
                    "choices": [{"index": 0, "message": message}],
                }
            )
            self._send(200, whole[: len(whole) // 2].encode())
        else:
            self._drop()

    def _drop(self) -> None:
        """Close the connection without a response; SO_LINGER 0 makes the close an RST, not a FIN."""
        self.close_connection = True
        try:
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.request.close()
        except OSError:
            pass


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
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def __repr__(self) -> str:
        # Never show the key.
        return f"SimServer(url={self.url if self._httpd else None!r}, seed={self.seed}, plan={self.plan})"

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> SimServer:
        if self._httpd is None:
            self._stop.clear()
            self._httpd = _HTTPServer((self.host, self.port), self)
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

    def _begin(self) -> int:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.requests

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] = self.faults.get(kind, 0) + 1

    def hold(self) -> None:
        """Stop answering: new and latency-delayed requests wait (counted in `held`) until release();
        stop() drops them unanswered, so they are never served (never "paid")."""
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

    def _admit(self) -> bool:
        with self._lock:
            self.held += 1
        try:
            while not self._open.wait(0.02):
                if self._stop.is_set():
                    return False
            return not self._stop.is_set()
        finally:
            with self._lock:
                self.held -= 1

    def _limit(self, body: dict[str, Any]) -> int | None:
        """The output-token limit as this dialect reads it: llama-cpp-python knows only `max_tokens`."""
        fields = ("max_tokens",) if self.dialect == "llama-cpp" else ("max_completion_tokens", "max_tokens")
        for name in fields:
            value = body.get(name)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise RequestError(400, f"'{name}' must be a positive integer")
                return value
        return None

    def _styled(self, n: int, reply: Reply) -> Reply:
        """The reply as plain prose (no field markers, no JSON object) for `unformatted_rate` of requests."""
        if self.unformatted_rate == 0 or _draw(self.seed, n, "unformatted") >= self.unformatted_rate:
            return reply
        prose = "Sure! " + " ".join(re.sub(r"\[\[ ## \w+ ## \]\]|[{}\[\]\"]", " ", reply.text).split())
        return Reply(prose, reply.input_tokens, max(1, -(-len(prose) // 4)))

    def _generate(
        self, n: int, model: str, system: str | None, messages: list[tuple[str, str]], seed: int, body: dict
    ) -> tuple[Reply, str]:
        """The sim's reply (to the n-th request) and its finish_reason under the output-token limit.

        In the llama-cpp dialect the model does not stop by itself (as small GGUF models behind
        llama-cpp-python often do not): it repeats itself until the limit, or until the context is full.
        """
        limit = self._limit(body)
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
        reply = self._styled(n, reply)
        if self.context_tokens is not None and self.dialect == "llama-cpp":
            room = max(1, self.context_tokens - reply.input_tokens)
            length = room if limit is None else min(limit, room)
            # sim.respond counts a token per 4 characters: `length` tokens are 4 * length characters.
            text = ((reply.text + "\n") * (4 * length // (len(reply.text) + 1) + 1))[: 4 * length]
            return Reply(text=text, input_tokens=reply.input_tokens, output_tokens=length), "length"
        if limit is not None and reply.output_tokens > limit:
            return Reply(reply.text[: 4 * limit], reply.input_tokens, limit), "length"
        return reply, reply.finish_reason

    def _record_served(
        self, prompt_tokens: int, completion_tokens: int, tier: str, digest: str, finish: str = "stop"
    ) -> None:
        with self._lock:
            self.truncated += finish == "length"
            self.served_requests[digest] = self.served_requests.get(digest, 0) + 1
            self.served += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost_usd += TIERS[tier].price.cost(prompt_tokens, completion_tokens)

    def _record_headers(self, headers: Mapping[str, str]) -> None:
        seen = {name: headers[name] for name in KEY_HEADERS.values() if headers.get(name) is not None}
        with self._lock:
            self.headers_seen.append(seen)

    def _record_repeat(
        self, digest: str, temperature: Any, prompt_tokens: int, completion_tokens: int, tier: str
    ) -> None:
        with self._lock:
            if self.served_requests[digest] > 1:
                key = str(temperature)
                self.repeats_by_temperature[key] = self.repeats_by_temperature.get(key, 0) + 1
                self.repeat_cost_usd += TIERS[tier].price.cost(prompt_tokens, completion_tokens)

    def _completion(
        self, n: int, model: str, tier: str, reply: Reply, finish: str = "stop"
    ) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        if self.report_cost:
            usage["cost"] = TIERS[tier].price.cost(reply.input_tokens, reply.output_tokens)
        return {
            "id": f"chatcmpl-sim-{n}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": finish}
            ],
            "usage": usage,
        }


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
    except (ValueError, OSError, TaskDataError) as exc:
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
