"""An experiment file's schema: the two models, the stages' optimizers and budgets, data and evaluation."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lsl_dagster.graph import OPTIONAL_ARMS
from lsl_dagster.spec.providers import FAMILIES, PROVIDER_NAMES, Family, key_variable_refusal
from lsl_dagster.spec.strict import Slug, Strict, check_slug

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# The label of anything the offline simulator (a provider, see lsl_dagster.llm.providers) produced.
SIMULATED = "SIMULATED (sim models are a deterministic test double, not real LLMs)"


class Price(Strict):
    """USD per million tokens; used to bound and estimate cost when a provider reports none."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


Adapter = Literal["chat", "json", "xml", "two_step"]
Dialect = Literal["openai", "llama.cpp", "llama-cpp-python", "vllm", "ollama"]


class ModelSpec(Strict):
    """One model entry of an experiment file. Never holds a key, only the name of its variable."""

    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=1024, ge=16, le=200_000)
    max_concurrency: int = Field(default=8, ge=1, le=256)
    timeout_s: float = Field(default=60.0, gt=0)
    price: Price | None = None
    # How DSPy lays out prompts to this model and parses its replies, in every call to it (the program's
    # predictors and the meta-prompts it writes). None: chat, or json with structured_outputs.
    adapter: Adapter | None = None
    # Send each predictor's output fields (names, types, choices) as a JSON schema for the server's
    # constrained decoding, in its dialect: weak models that cannot format a reply can still fill one.
    structured_outputs: bool = False
    # The server's kind, where the model string cannot tell it (openai/<model> with an api_base).
    dialect: Dialect | None = None

    @field_validator("model")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        provider, _, name = value.partition("/")
        if provider not in PROVIDER_NAMES or not name or (provider == "openrouter" and "/" not in name):
            raise ValueError(
                f"model {value!r} must be spelled as DSPy spells it: openai/<model>, anthropic/<model>, "
                "gemini/<model>, openrouter/<org>/<model>, ollama_chat/<model>, or sim/<tier> "
                "(any OpenAI-compatible server: openai/<model> with api_base)"
            )
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not _ENV_NAME.fullmatch(value):
            # Catches the classic mistake of pasting the key itself, without echoing it back.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (e.g. MY_KEY), not a key"
            )
        # The operator's exceptions (LSL_KEY_VARS) come in the validation context (Settings).
        allowed = (info.context or {}).get("key_vars", frozenset())
        if refusal := key_variable_refusal(value, allowed):
            raise ValueError(refusal)
        return value

    @field_validator("api_base")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError(f"api_base {value!r} must be an http(s) URL, e.g. http://127.0.0.1:8080/v1")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _reachable(self) -> ModelSpec:
        # The provider knows its models; imported here because the providers are built on these specs.
        from lsl_dagster.llm.providers import PROVIDERS

        PROVIDERS[self.provider].check_name(self.model)
        if self.provider == "sim" and self.api_base:
            raise ValueError(f"{self.model}: the in-process simulator takes no api_base")
        if self.structured_outputs and self.adapter not in (None, "json"):
            raise ValueError(
                f"{self.model}: structured_outputs makes every reply a JSON object, which only adapter: json "
                f"parses; drop adapter: {self.adapter} or structured_outputs"
            )
        if self.structured_outputs and self.provider == "sim":
            raise ValueError(
                f"{self.model}: the in-process simulator has no constrained decoding; use the sim server "
                "(openai/sim-<tier> with api_base) to test structured_outputs"
            )
        if self.dialect is not None and self.family.lm15 in ("anthropic", "gemini"):
            raise ValueError(f"{self.model}: dialect applies to OpenAI-compatible servers only")
        return self

    @property
    def output_adapter(self) -> Adapter:
        return self.adapter or ("json" if self.structured_outputs else "chat")

    @property
    def wire_dialect(self) -> Dialect:
        """The server's dialect: as given, else what the model string says (Ollama's own, else OpenAI's)."""
        return self.dialect or ("ollama" if self.provider == "ollama_chat" else "openai")

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def simulated(self) -> bool:
        return self.provider == "sim"

    @property
    def family(self) -> Family:
        return FAMILIES[self.provider]

    @property
    def endpoint(self) -> str:
        """Where requests go: api_base, else the provider's own endpoint ("sim" in process)."""
        if self.simulated:
            return "sim"
        return self.api_base or self.family.default_url

    @property
    def default_endpoint(self) -> bool:
        """True when requests go to the provider's own endpoint (no api_base, or api_base equal to it)."""
        return not self.simulated and self.endpoint == self.family.default_url


Optimizer = Literal["miprov2", "gepa", "bootstrap_rs", "simba"]
# Stage 2 hardens a given prompt: optimizers that start from a program's instructions.
HardeningOptimizer = Literal["gepa", "miprov2", "simba"]


class Stage1Spec(Strict):
    optimizer: Optimizer = "miprov2"
    max_calls: int = Field(default=200, ge=10)
    # The model that writes instruction proposals (MIPROv2), reflections (GEPA) and rules (SIMBA); also
    # used by the budget-matched arm. Small models often cannot write them in a format DSPy can parse.
    prompt_model: Literal["large", "small"] = "large"


class Stage2Spec(Strict):
    # GEPA rewrites the instructions (demos kept); MIPROv2 proposes instructions only (demos kept);
    # SIMBA appends rules to the instructions and may add or drop demos (see stages.stage2_harden).
    optimizer: HardeningOptimizer = "gepa"
    max_calls: int = Field(default=200, ge=10)
    # Who writes proposals (GEPA's reflections, MIPROv2's instructions, SIMBA's rules): rewriting
    # instructions is a job for the stronger model by default.
    reflection: Literal["large", "small"] = "large"
    # Before spending its budget, Stage 2 scores the small model on this many dev examples; when its
    # replies are mostly unparseable or every score is 0 there is no signal to optimize on: stop (the
    # stage fails, naming cause and fix) or warn (continue, with the reason in stop_reason).
    probe_examples: int = Field(default=8, ge=1)
    on_no_signal: Literal["stop", "warn"] = "stop"


class DataSpec(Strict):
    """How many examples the optimizers see (taken from the task's train and dev splits)."""

    train: int = Field(default=40, ge=2)
    val: int = Field(default=30, ge=2)
    # Which train and dev examples are drawn; the experiment's seed when omitted. The test examples are
    # drawn by it too only with evaluation.resample.
    seed: int | None = Field(default=None, ge=0)


class SequentialSpec(Strict):
    """Evaluate the arms in rounds and stop once every paired difference is settled (method.sequential)."""

    # Family-wise: each of the k paired differences gets a confidence sequence at alpha / k.
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # A difference whose sequence lies inside [-margin, margin] is settled as practically equivalent;
    # 0: only a sequence that excludes 0 settles it.
    margin: float = Field(default=0.0, ge=0, lt=1)
    # No stop before every arm has this many examples (nor a verdict drawn from fewer).
    min_examples: int = Field(default=50, ge=1)
    # False: each sequence covers the prompts' expected difference on examples like these, the fixed
    # design's question. True: this test set's own mean difference (the finite-population form, which
    # narrows as the set is used up, so settles sooner, but claims nothing beyond these examples).
    finite: bool = False


class EvaluationSpec(Strict):
    split: Literal["dev", "test"] = "test"
    limit: int | None = Field(default=100, ge=1)
    # False: the split's first `limit` examples, the same for every seed. True: `limit` examples drawn by
    # the data seed (data.seed, else the experiment's), so intervals across seeds include the test sample's.
    resample: bool = False
    # Opt-in: evaluate in rounds and stop when the comparison is settled; None: every arm on `limit`.
    sequential: SequentialSpec | None = None


_MODEL_LATER = {"adapter": None, "structured_outputs": False, "dialect": None}
# Per section of an experiment file, the settings added after experiments had run, with their defaults.
LATER_SETTINGS: dict[str, dict[str, Any]] = {
    "large_model": _MODEL_LATER,
    "small_model": _MODEL_LATER,
    "stage2": {"probe_examples": 8, "on_no_signal": "stop"},
    "evaluation": {"sequential": None},
}


class ExperimentSpec(Strict):
    experiment_id: Slug
    task: str
    large_model: ModelSpec
    small_model: ModelSpec
    stage1: Stage1Spec = Stage1Spec()
    stage2: Stage2Spec = Stage2Spec()
    data: DataSpec = DataSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    max_cost_usd: float | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0)
    # The optional arms (graph.OPTIONAL_ARMS) this experiment adds to the three every experiment has.
    arms: list[str] = Field(default_factory=list)

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in OPTIONAL_ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; the optional arms are {list(OPTIONAL_ARMS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"an arm is listed twice in {value}")
        return value

    @field_validator("task")
    @classmethod
    def _task_slug(cls, value: str) -> str:
        return check_slug(value)

    @property
    def spec_hash(self) -> str:
        """Content hash of the validated spec: formatting and comments do not change it. Settings added
        after experiments had run (LATER_SETTINGS) count only when set, so that adding one leaves every
        existing experiment's hash, and so its outputs, current."""
        unset: dict[str, Any] = {}
        for section, defaults in LATER_SETTINGS.items():
            values = getattr(self, section)
            left = {name for name, default in defaults.items() if getattr(values, name) == default}
            if left:
                unset[section] = left
        # `arms:` came later too: an experiment without optional arms keeps its hash.
        exclude: dict[str, Any] = {**unset, **({} if self.arms else {"arms": True})}
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()[:16]

    @property
    def simulated(self) -> bool:
        return self.large_model.simulated or self.small_model.simulated

    @property
    def version(self) -> SpecVersion:
        from lsl_dagster import CODE_VERSION

        return SpecVersion(spec_hash=self.spec_hash, code_version=CODE_VERSION)

    def model(self, role: Literal["large", "small"]) -> ModelSpec:
        return self.large_model if role == "large" else self.small_model


class SpecVersion(Strict):
    """What an output was made from: the validated experiment spec and the code that ran it."""

    spec_hash: str
    code_version: str

    def __str__(self) -> str:
        return f"spec {self.spec_hash}, code {self.code_version}"
