"""The sim server's other dialects: Anthropic messages and Gemini generateContent wire formats (requests
in, replies out), and how llama-cpp-python's server reads limits and writes with a small model.

The OpenAI chat format is `sim.http`'s; these let tests drive DSPy's native Anthropic and Gemini adapters
against a local server that speaks what the real provider speaks, including usage fields, and the OpenAI
adapter against a server that behaves as llama.cpp's do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lsl_dagster.sim.replies import Reply

MESSAGES_PATHS = ("/v1/messages", "/messages")
GEMINI_PATH = re.compile(r"/(?:v1|v1beta)/models/(?P<model>[^/:]+):generateContent")
# Where each dialect carries the key, and the header names a test may ask the server about.
KEY_HEADERS = {"openai": "Authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}


class DialectError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _blocks_text(content: object) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(
            str(block.get("text", "")) for block in content if isinstance(block, dict) and "text" in block
        )
    raise DialectError(400, "content must be a string or a list of blocks")


def parse_messages(body: object) -> tuple[str, str | None, list[tuple[str, str]], float | None]:
    """(model, system, turns, temperature) from an Anthropic messages request."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise DialectError(400, "model: field required")
    if not isinstance(body.get("max_tokens"), int):
        raise DialectError(400, "max_tokens: field required")  # Anthropic requires it
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DialectError(400, "messages: at least one message is required")
    turns = [(str(m.get("role")), _blocks_text(m.get("content"))) for m in messages if isinstance(m, dict)]
    system = _blocks_text(body.get("system")) or None
    return body["model"], system, turns, body.get("temperature")


def render_messages(n: int, model: str, reply: Reply) -> dict[str, Any]:
    return {
        "id": f"msg_sim_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    }


def parse_gemini(body: object) -> tuple[str | None, list[tuple[str, str]], float | None]:
    """(system, turns, temperature) from a Gemini generateContent request (the model is in the path)."""
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list) or not body["contents"]:
        raise DialectError(400, "contents is not specified")
    turns = []
    for content in body["contents"]:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            raise DialectError(400, "each content needs parts")
        turns.append((str(content.get("role", "user")), _blocks_text(parts)))
    instruction = body.get("systemInstruction") or body.get("system_instruction")
    system = _blocks_text(instruction.get("parts")) if isinstance(instruction, dict) else None
    config = body.get("generationConfig") or {}
    return system or None, turns, config.get("temperature")


def render_gemini(model: str, reply: Reply) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": reply.text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": reply.input_tokens,
            "candidatesTokenCount": reply.output_tokens,
            "totalTokenCount": reply.input_tokens + reply.output_tokens,
        },
        "modelVersion": model,
    }


def token_limit(body: Mapping[str, Any], dialect: str) -> int | None:
    """The output-token limit as the dialect reads it: llama-cpp-python knows only `max_tokens`."""
    fields = ("max_tokens",) if dialect == "llama-cpp" else ("max_completion_tokens", "max_tokens")
    for name in fields:
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DialectError(400, f"'{name}' must be a positive integer")
            return value
    return None


def unformatted(reply: Reply) -> Reply:
    """The reply as plain prose (no field markers, no JSON object), as a small model often writes."""
    prose = "Sure! " + " ".join(re.sub(r"\[\[ ## \w+ ## \]\]|[{}\[\]\"]", " ", reply.text).split())
    return Reply(prose, reply.input_tokens, max(1, -(-len(prose) // 4)))


def llama_cpp_reply(reply: Reply, limit: int | None, context_tokens: int) -> Reply:
    """llama-cpp's small model never stops by itself (as small GGUF models behind llama-cpp-python often
    do not): it repeats itself until the limit, or until the context is full (finish_reason "length")."""
    room = max(1, context_tokens - reply.input_tokens)
    length = room if limit is None else min(limit, room)
    # sim.respond counts a token per 4 characters: `length` tokens are 4 * length characters.
    text = ((reply.text + "\n") * (4 * length // (len(reply.text) + 1) + 1))[: 4 * length]
    return Reply(text=text, input_tokens=reply.input_tokens, output_tokens=length)
