"""Output formats per model: the DSPy adapter a model's calls go through, and, with `structured_outputs`,
its predictors' output fields as a JSON schema sent for the server's constrained decoding in its dialect.

The adapter sees the signature and the engine sees the wire request; the schema goes from one to the other
in a context variable for the duration of the call (llm.cache.schema_scope, which keys the cache on it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import dspy
import pydantic
from dspy.lm15 import ProviderError, Request, Response

from lsl_dagster.llm.cache import current_schema, schema_scope
from lsl_dagster.llm.engine import StructuredOutputsRejected
from lsl_dagster.spec.experiment import Dialect, ModelSpec


def _close(node: Any) -> None:
    """Strict mode (OpenAI's; others accept it): every object lists all its properties as required and
    allows no others, nested ones and $defs included."""
    if isinstance(node, dict):
        if node.get("type") == "object" and isinstance(node.get("properties"), dict):
            node["required"] = list(node["properties"])
            node["additionalProperties"] = False
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)


def output_schema(signature: type[dspy.Signature]) -> dict[str, Any] | None:
    """The JSON schema of a signature's output fields (names, types, Literal choices as enums); None
    when a type has no closed schema (e.g. an open dict), so that call goes unconstrained."""
    fields = {name: (field.annotation, ...) for name, field in signature.output_fields.items()}
    try:
        model = pydantic.create_model("Outputs", __config__=pydantic.ConfigDict(extra="forbid"), **fields)
        schema = model.model_json_schema()
    except (TypeError, ValueError, pydantic.PydanticSchemaGenerationError):
        return None
    if any(not isinstance(p, dict) or p.get("additionalProperties") for p in schema["properties"].values()):
        return None
    _close(schema)
    schema.pop("title", None)
    return schema


def adapter_for(spec: ModelSpec, extraction: dspy.LM | None) -> dspy.Adapter:
    """The DSPy adapter of a model entry; two_step extracts the fields with `extraction` (the large model)."""
    name = spec.output_adapter
    if name == "two_step":
        assert extraction is not None, "two_step needs the model that extracts the fields"
        return dspy.TwoStepAdapter(extraction)
    return {"chat": dspy.ChatAdapter, "json": dspy.JSONAdapter, "xml": dspy.XMLAdapter}[name]()


class ModelAdapter(dspy.Adapter):
    """The stage's adapter: each call goes through the adapter of the model it is sent to (its `adapter`
    attribute, set by StageRun), with that model's output schema in scope when it has structured_outputs."""

    def __call__(
        self,
        lm: Any,
        lm_kwargs: dict[str, Any],
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        adapter = getattr(lm, "adapter", None) or dspy.ChatAdapter()
        schema = output_schema(signature) if getattr(lm, "structured", False) else None
        with schema_scope(schema):
            return adapter(lm, lm_kwargs, signature, demos, inputs)


def _response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "outputs", "schema": schema, "strict": True}}


def wire_fields(dialect: Dialect, schema: dict[str, Any]) -> dict[str, Any]:
    """The request body fields that ask a server of `dialect` for a reply matching `schema`."""
    if dialect == "llama-cpp-python":
        # Its server takes only text or json_object, the latter with an optional schema.
        return {"response_format": {"type": "json_object", "schema": schema}}
    if dialect == "ollama":
        # Ollama's /v1 maps response_format json_schema to its native `format`, sent too for its native
        # readers (proxies in front of it, versions before the mapping).
        return {"response_format": _response_format(schema), "format": schema}
    # OpenAI (strict), llama.cpp's llama-server and vLLM all read OpenAI's json_schema response_format.
    return {"response_format": _response_format(schema)}


class ConstrainedDecoding:
    """Sends the call's output schema in the model's dialect; a 4xx naming the field is a clear error."""

    def __init__(self, inner: Any, spec: ModelSpec):
        self.inner = inner
        self.spec = spec

    def complete(self, request: Request) -> Response:
        schema = current_schema()
        if schema is None:
            return self.inner.complete(request)
        config = request.config
        if self.spec.family.lm15 in ("anthropic", "gemini"):
            # Their native structured outputs, which DSPy's engine writes from the canonical field.
            canonical = {"type": "json_schema", "name": "outputs", "schema": schema, "strict": True}
            return self.inner.complete(replace(request, config=replace(config, response_format=canonical)))
        fields = wire_fields(self.spec.wire_dialect, schema)
        # The adapter's own response_format (JSONAdapter asks for json_object) gives way to the schema.
        extensions = {**(config.extensions or {}), **fields}
        request = replace(request, config=replace(config, response_format=None, extensions=extensions))
        try:
            return self.inner.complete(request)
        except ProviderError as exc:
            status = getattr(exc, "status", None)
            named = [name for name in fields if name in str(exc)]
            if isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 429) and named:
                raise StructuredOutputsRejected(self._rejected(named[0], status, exc)) from exc
            raise

    def _rejected(self, field: str, status: int, exc: Exception) -> str:
        spec = self.spec
        said = " ".join(str(exc).split())[:300]
        return (
            f"{spec.model} at {spec.endpoint} rejected `{field}`, the constrained-decoding field that "
            f"structured_outputs: true sends in dialect {spec.wire_dialect} (HTTP {status}: {said}). Set "
            "`dialect:` on its model entry to the server's (openai, llama.cpp, llama-cpp-python, vllm, "
            "ollama), or structured_outputs: false"
        )

    def stream(self, request: Request) -> Any:
        raise NotImplementedError("lsl_dagster does not stream")

    def close(self) -> None:
        self.inner.close()
