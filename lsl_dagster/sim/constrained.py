"""Constrained decoding as the sim server honours it: each dialect's field read from the request, and a
reply that always matches the schema (as a grammar-constrained server's does), whatever the model meant.

Matching the schema is all it guarantees, as on a real server: a value outside an enum becomes one of
the enum's (drawn, not the right one), a missing field an empty value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from lsl_dagster.sim.dialects import DialectError
from lsl_dagster.sim.replies import Reply
from lsl_dagster.sim.words import HEADER, tokens

# llama-cpp-python's server validates response_format with pydantic and knows only these two types.
LLAMA_CPP_PYTHON_REJECTION = (
    "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}]"
)


def requested_schema(body: Mapping[str, Any], dialect: str, reject: bool) -> tuple[str, dict] | None:
    """(field, schema) of the request's constrained decoding, if any: response_format json_schema
    (OpenAI, llama-server, vLLM, Ollama's /v1), json_object + schema (llama.cpp's servers), `format`
    (Ollama) or `guided_json` (vLLM). DialectError(400) where the server would refuse it."""
    response_format = body.get("response_format")
    found: tuple[str, Any] | None = None
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        if dialect == "llama-cpp":
            raise DialectError(400, LLAMA_CPP_PYTHON_REJECTION)
        found = ("response_format", (response_format.get("json_schema") or {}).get("schema"))
    elif isinstance(response_format, dict) and "schema" in response_format:
        found = ("response_format", response_format["schema"])
    elif "format" in body or "guided_json" in body:
        name = "format" if "format" in body else "guided_json"
        found = (name, body[name])
    if found is None:
        return None
    name, schema = found
    if reject:
        raise DialectError(400, f"Unrecognized request argument supplied: {name}")
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        raise DialectError(400, f"'{name}' must carry a JSON schema object with properties")
    return name, schema


def _values(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        parts = HEADER.split(text)
        return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    return value if isinstance(value, dict) else {}


def _fit(value: Any, schema: Mapping[str, Any], digest: str) -> Any:
    if "enum" in schema:
        choices = schema["enum"]
        return value if value in choices else choices[int(digest[:8], 16) % len(choices)]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties") or {}
        given = value if isinstance(value, dict) else {}
        return {name: _fit(given.get(name), sub, digest + name) for name, sub in properties.items()}
    if kind == "array":
        return value if isinstance(value, list) else []
    if kind in ("integer", "number"):
        try:
            return int(value) if kind == "integer" else float(value)
        except (TypeError, ValueError):
            return 0
    if kind == "boolean":
        return bool(value)
    return "" if value is None else str(value)


def constrained(reply: Reply, schema: Mapping[str, Any]) -> Reply:
    """The reply as the schema lets it be written: a JSON object with its fields, nothing else."""
    digest = hashlib.blake2b(reply.text.encode(), digest_size=8).hexdigest()
    text = json.dumps(_fit(_values(reply.text), schema, digest))
    return Reply(text, reply.input_tokens, tokens(text))
