"""The sim server's Anthropic messages and Gemini generateContent wire formats (requests in, replies out).

The OpenAI chat format is sim_server's own; these two let tests drive DSPy's native Anthropic and Gemini
adapters against a local server that speaks what the real provider speaks, including usage fields.
"""

from __future__ import annotations

import re
from typing import Any

from lsl_dagster.sim.engine import Reply

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
