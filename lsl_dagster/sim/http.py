"""The sim server's OpenAI chat route and HTTP handling: requests in, completions, errors and faults out.

The Anthropic and Gemini formats are in `sim.dialects`; counters, holds and the reply itself are the
`SimServer`'s (`sim.server`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import sys
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from lsl_dagster.llm.engine import SIMULATED_FINGERPRINT
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
from lsl_dagster.sim.engine import respond
from lsl_dagster.sim.replies import Reply
from lsl_dagster.sim.tiers import TIERS, tier_name

if TYPE_CHECKING:
    from lsl_dagster.sim.server import SimServer

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MODEL_IDS = tuple(f"sim-{name}" for name in TIERS)
# Every sim reply says what it is, in a header as well as its `system_fingerprint`.
SIMULATED_HEADER = "X-LSL-Simulated"


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


def _completion(n: int, model: str, reply: Reply, finish: str, cost: float | None) -> dict[str, Any]:
    """An OpenAI chat completion; `usage.cost` when the server reports cost (as OpenRouter does)."""
    usage: dict[str, Any] = {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }
    if cost is not None:
        usage["cost"] = cost
    return {
        "id": f"chatcmpl-sim-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "system_fingerprint": SIMULATED_FINGERPRINT,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": finish}
        ],
        "usage": usage,
    }


class SimHTTPServer(ThreadingHTTPServer):
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
    server: SimHTTPServer

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
            self.server.sim.count(count_as)
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
        n = sim.begin()
        gemini = GEMINI_PATH.fullmatch(path)
        dialect = "gemini" if gemini else "anthropic"
        try:
            sim.record_headers(self.headers)
            given = self.headers.get(KEY_HEADERS[dialect], "")
            if sim.api_key is not None and not hmac.compare_digest(given.encode(), sim.api_key.encode()):
                sim.count("rejected")
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
            if sim.latency_s > 0 and sim.stopped(sim.latency_s):
                self._drop()
                return
            reply = respond(model, system, turns, sim.seed, keys=sim.answer_keys)
            digest = hashlib.sha256(json.dumps([model, system, turns, sim.seed]).encode()).hexdigest()
            sim.record_served(reply.input_tokens, reply.output_tokens, tier, digest)
            sim.record_repeat(digest, temperature, reply.input_tokens, reply.output_tokens, tier)
            rendered = render_gemini(model, reply) if gemini else render_messages(n, model, reply)
            self._json(
                200, {**rendered, "system_fingerprint": SIMULATED_FINGERPRINT}, {SIMULATED_HEADER: "1"}
            )
        except RequestError as exc:
            sim.count("rejected")
            self._json(exc.status, {"error": {"type": "invalid_request_error", "message": exc.message}})
        finally:
            sim.end()

    def _chat(self, raw: bytes) -> None:
        sim = self.server.sim
        n = sim.begin()
        try:
            sim.record_headers(self.headers)
            if not self._authorized(count_as="rejected"):
                return
            fault = sim.plan.fault_for(n)
            if fault is not None:
                sim.count_fault(fault)
                if fault != "hang":
                    self._fault(fault, n)
                    return
                if sim.stopped(sim.hang_s):
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
            if sim.latency_s > 0 and sim.stopped(sim.latency_s):
                self._drop()
                return
            if not sim.admit():
                self._drop()
                return
            seed = sim.seed if seed is None else seed
            reply, finish = sim.generate(n, model, system, messages, seed, body)
            cost = TIERS[tier].price.cost(reply.input_tokens, reply.output_tokens)
            payload = _completion(n, model, reply, finish, cost if sim.report_cost else None)
            # Counted before the write, so a client that reads the reply and then the stats sees it.
            digest = hashlib.sha256(json.dumps([model, system, messages, seed]).encode()).hexdigest()
            sim.record_served(reply.input_tokens, reply.output_tokens, tier, digest, finish)
            sim.record_repeat(digest, body.get("temperature"), reply.input_tokens, reply.output_tokens, tier)
            self._json(200, payload, {SIMULATED_HEADER: "1"})
        except RequestError as exc:
            sim.count("rejected")
            self._json(exc.status, _error_body(exc.message, exc.type, exc.code))
        finally:
            sim.end()

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
        elif kind in ("empty_choices", "null_content"):
            message = {"role": "assistant", "content": None}
            choices = (
                [] if kind == "empty_choices" else [{"index": 0, "message": message, "finish_reason": "stop"}]
            )
            body = {"id": f"chatcmpl-sim-{n}", "object": "chat.completion", "created": 0, "choices": choices}
            self._json(200, body, {SIMULATED_HEADER: "1"})
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
