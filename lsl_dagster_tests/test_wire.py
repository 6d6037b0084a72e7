"""Each provider family's wire format against a local server that speaks it, and where keys go."""

import math
import os
from pathlib import Path

import pytest

from lsl_dagster.llm.cache import ResponseStore, cache_path, experiment_cache
from lsl_dagster.llm.http import packaged_price
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import Meter
from lsl_dagster.llm.provider import ConfigError
from lsl_dagster.llm.providers import PROVIDERS
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment import ModelSpec, Price
from lsl_dagster.spec.providers import api_key, key_variable
from lsl_dagster_tests.conftest import Lab

SECRET = "sk-default-provider-key-never-elsewhere"
OWN = "sk-named-for-this-server"
PRICE = Price(input_per_mtok=3.0, output_per_mtok=15.0)


def _base(server: SimServer, family: str) -> str:
    return server.url.removesuffix("/v1") + "/v1beta" if family == "gemini" else server.url


def _call(spec: ModelSpec, run_dir: Path) -> tuple[str, Meter]:
    """One call through the metered LM, with the experiment cache of a fresh run directory."""
    meter = Meter("wire", max_calls=None, cost_allowance_usd=None)
    lm = LanguageModels(num_retries=0).lm(spec, meter, seed=0)
    messages = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "2+2?"}]
    try:
        with ResponseStore(cache_path(run_dir)) as store, experiment_cache(store, meter):
            text = lm(messages=messages)[0]
    finally:
        lm.engine.close()
    return text, meter


@pytest.mark.parametrize("family", ["openai", "anthropic", "gemini"])
def test_each_wire_format_round_trips_usage_and_cost(
    family: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("WIRE_KEY", OWN)
    with SimServer(api_key=OWN).start() as server:
        spec = ModelSpec(
            model=f"{family}/sim-large", api_base=_base(server, family), api_key_env="WIRE_KEY", price=PRICE
        )
        text, meter = _call(spec, tmp_path)
        stats = server.stats()
        seen = server.headers_seen
    assert text and stats["served"] == 1
    usage = meter.ledger().by_model[spec.model]
    # Tokens as the server counted them, parsed from each format's own usage fields.
    assert (usage.input_tokens, usage.output_tokens) == (stats["prompt_tokens"], stats["completion_tokens"])
    if family == "openai":  # the sim's OpenAI route reports usage.cost, as OpenRouter does
        assert (usage.cost_source, usage.cost_usd) == ("provider", pytest.approx(stats["cost_usd"]))
    else:  # Anthropic and Gemini report tokens only: the price table prices them
        assert usage.cost_source == "price_table"
        assert usage.cost_usd == pytest.approx(PRICE.cost(usage.input_tokens, usage.output_tokens))
    header = {"openai": "Authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}[family]
    assert seen[0][header] == (f"Bearer {OWN}" if family == "openai" else OWN)


@pytest.mark.parametrize(
    ("family", "variable"),
    [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"), ("gemini", "GEMINI_API_KEY")],
)
def test_a_default_key_is_never_sent_to_a_custom_api_base(
    family: str, variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.setenv(name, SECRET)
    with SimServer().start() as server:
        spec = ModelSpec(model=f"{family}/sim-large", api_base=_base(server, family), price=PRICE)
        assert key_variable(spec, os.environ) is None and api_key(spec, os.environ) is None
        _call(spec, tmp_path)
        seen = server.headers_seen
    assert len(seen) == 1
    assert all(SECRET not in value for value in seen[0].values()), seen


def test_default_endpoints_read_their_own_conventional_variable(monkeypatch: pytest.MonkeyPatch):
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "OPENROUTER_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    assert ModelSpec(model="openai/gpt-4.1-mini").endpoint == "https://api.openai.com/v1"
    assert key_variable(ModelSpec(model="anthropic/claude-sonnet-4-5"), {}) == "ANTHROPIC_API_KEY"
    assert key_variable(ModelSpec(model="openrouter/openai/gpt-4o-mini"), {}) == "OPENROUTER_API_KEY"
    google = {"GOOGLE_API_KEY": "g"}
    assert key_variable(ModelSpec(model="gemini/gemini-2.5-flash"), google) == "GOOGLE_API_KEY"
    assert api_key(ModelSpec(model="gemini/gemini-2.5-flash"), google) == "g"
    assert (
        key_variable(ModelSpec(model="gemini/gemini-2.5-flash", api_key_env="MINE_KEY"), google) == "MINE_KEY"
    )
    assert key_variable(ModelSpec(model="ollama_chat/llama3.2"), google) is None
    # A missing key fails before any call, naming the variable.
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        LanguageModels().check_model(ModelSpec(model="openai/gpt-4.1-mini"), need_price=False)


def test_prices_come_from_the_packaged_map_and_price_overrides():
    price = packaged_price(ModelSpec(model="openai/gpt-4.1-mini"))
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (pytest.approx(0.4), pytest.approx(1.6))
    assert packaged_price(ModelSpec(model="anthropic/claude-sonnet-4-5")) is not None
    assert PROVIDERS["openai"].price(ModelSpec(model="openai/gpt-4.1-mini", price=PRICE)) == PRICE
    # A model name on someone else's server has no list price.
    assert packaged_price(ModelSpec(model="openai/gpt-4.1-mini", api_base="http://127.0.0.1:1/v1")) is None


def test_reasoning_models_fail_before_any_call_saying_what_to_set(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    said = r"o3-mini cannot run with temperature 0.0.*DSPy said: .*temperature=1.0"
    with pytest.raises(ConfigError, match=said):
        LanguageModels().check_model(ModelSpec(model="openai/o3-mini"), need_price=True)
    LanguageModels().check_model(
        ModelSpec(model="openai/gpt-5-mini", temperature=1, max_tokens=16000), need_price=True
    )


def test_a_garbled_reply_counts_at_its_worst_case_cost(tmp_path: Path):
    # The first reply is garbled (HTTP 200, not JSON): it may have been billed, so it counts at the
    # request's worst-case cost; DSPy's retry then succeeds.
    with SimServer(faults={1: "malformed"}).start() as server:
        spec = ModelSpec(model="openai/sim-large", api_base=server.url, price=PRICE)
        meter = Meter("wire", max_calls=None, cost_allowance_usd=None)
        lm = LanguageModels(num_retries=1).lm(spec, meter, seed=0)
        try:
            with ResponseStore(cache_path(tmp_path)) as store, experiment_cache(store, meter):
                lm(messages=[{"role": "user", "content": "2+2?"}])
        finally:
            lm.engine.close()
        stats = server.stats()
    usage = meter.ledger().by_model[spec.model]
    assert (usage.calls, usage.failed_attempts) == (1, 1) and stats["requests"] == 2
    worst = PRICE.cost(math.ceil(len("2+2?") / 2) + 16, spec.max_tokens)
    assert usage.cost_usd == pytest.approx(stats["cost_usd"] + worst, rel=0.05)
    assert usage.cost_usd > stats["cost_usd"] and usage.cost_source == "mixed"


def test_auth_errors_stop_the_step_at_once_without_retries(lab: Lab, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WRONG_KEY", "sk-not-the-right-one")
    with SimServer(api_key=OWN).start() as server:
        model = {"model": "openai/sim-large", "api_base": server.url, "api_key_env": "WRONG_KEY"}
        lab.write("denied", large_model=model)
        result = lab.run("denied", raise_on_error=False, step_retries=2, step_retry_delay_s=0.0)
        stats = server.stats()
    assert not result.success
    # One request, refused with 401: neither DSPy nor Dagster retried it.
    assert stats["requests"] == stats["rejected"] == 1
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "access denied" in failure.event_specific_data.error.message
