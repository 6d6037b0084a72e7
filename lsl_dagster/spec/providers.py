"""The provider families a model entry may name, and which key variable each endpoint may receive."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from lsl_dagster.spec.experiment import ModelSpec


class Family(NamedTuple):
    """A provider family as DSPy spells it (the model string's prefix)."""

    lm15: str  # DSPy's native engine's provider id: the wire format and auth scheme
    default_url: str  # the provider's own endpoint, used when the model entry has no api_base
    key_vars: tuple[str, ...]  # its conventional key variables, first set wins; () for keyless servers
    price_namespace: str | None  # where DSPy's packaged price map lists it


FAMILIES: dict[str, Family] = {
    "openai": Family("openai-chat", "https://api.openai.com/v1", ("OPENAI_API_KEY",), "openai"),
    "anthropic": Family("anthropic", "https://api.anthropic.com/v1", ("ANTHROPIC_API_KEY",), "anthropic"),
    "gemini": Family(
        "gemini",
        "https://generativelanguage.googleapis.com/v1beta",
        ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        "gemini",
    ),
    "openrouter": Family("openrouter", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY",), "openrouter"),
    "ollama_chat": Family("ollama", "http://localhost:11434/v1", (), None),
}
PROVIDER_NAMES = ("sim", *FAMILIES)


# Variables that hold something other than a provider's key: sending one as a bearer token to an
# experiment's api_base would hand it to whoever runs that server. (rule, does a name fall under it)
_NOT_KEYS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    (
        "a setting of this project or of Dagster (LSL_*, DAGSTER_*)",
        lambda n: n.startswith(("LSL_", "DAGSTER_")),
    ),
    (
        "a database or broker setting (*_URL, *_URI, *_DSN, DATABASE_*, PG*, MYSQL_*, REDIS_*, AMQP_*, "
        "RABBITMQ_*, CELERY_*)",
        lambda n: (
            n.endswith(("_URL", "_URI", "_DSN"))
            or n.startswith(("DATABASE_", "PG", "MYSQL_", "REDIS_", "AMQP_", "RABBITMQ_", "CELERY_"))
        ),
    ),
    (
        "a cloud credential (AWS_*, AZURE_*, GOOGLE_APPLICATION_CREDENTIALS)",
        lambda n: n.startswith(("AWS_", "AZURE_")) or n == "GOOGLE_APPLICATION_CREDENTIALS",
    ),
    (
        "not named like a provider key (*_API_KEY, *_KEY, *_TOKEN)",
        lambda n: not n.endswith(("_KEY", "_TOKEN")),
    ),
)


def key_variable_refusal(name: str, allowed: Collection[str]) -> str | None:
    """Why `api_key_env` may not name `name` (the rule it breaks), or None when it may: names that look
    like provider keys, except the families above, and any name the operator lists in LSL_KEY_VARS."""
    if name in allowed:
        return None
    rule = next((rule for rule, applies in _NOT_KEYS if applies(name.upper())), None)
    if rule is None:
        return None
    return f"api_key_env {name} is refused: {rule}; an operator may allow it by listing it in LSL_KEY_VARS"


def _key_names(spec: ModelSpec) -> tuple[str, ...]:
    """The variables this endpoint's key may come from, first set wins.

    A key goes only where it belongs: the provider's conventional variable (OPENAI_API_KEY, ...) only to
    the provider's own endpoint; a custom api_base gets a key only when api_key_env names one.
    """
    if spec.api_key_env:
        return (spec.api_key_env,)
    if spec.simulated or not spec.default_endpoint:
        return ()
    return spec.family.key_vars


def key_variable(spec: ModelSpec, environ: Mapping[str, str]) -> str | None:
    """The variable the key is read from (the first set one, else the first to set); None: no key is sent."""
    names = _key_names(spec)
    return next((name for name in names if environ.get(name)), names[0] if names else None)


def api_key(spec: ModelSpec, environ: Mapping[str, str]) -> str | None:
    """The key this model's endpoint may receive from `environ`; None when none may be sent or is set."""
    return next((environ[name] for name in _key_names(spec) if environ.get(name)), None)
