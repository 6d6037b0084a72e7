"""Outputs a step reads from storage rather than as Dagster inputs (which every partition would then need):
the optional arms' prompts and evaluations, for the comparison; every arm's prompt, for a sequential
evaluation's rounds. A missing one fails the step, naming the command that makes it."""

from collections.abc import Callable

from dagster import AssetExecutionContext, AssetKey, Failure
from pydantic import BaseModel

from lsl_dagster import graph
from lsl_dagster.defs.io_managers import PydanticJsonIOManager
from lsl_dagster.records import EvaluationResult, PromptCandidate
from lsl_dagster.spec.experiment import ExperimentSpec


def _load(
    context: AssetExecutionContext,
    io_manager: PydanticJsonIOManager,
    wanted: list[tuple[str, type[BaseModel]]],
    why: Callable[[list[str]], str],
) -> dict[str, BaseModel]:
    loaded: dict[str, BaseModel] = {}
    missing = []
    for name, model in wanted:
        try:
            loaded[name] = io_manager.load(AssetKey(name), context.partition_key, model)
        except FileNotFoundError:
            missing.append(name)
    if missing:
        raise Failure(description=why(missing), allow_retries=False)
    return loaded


def optional_outputs(
    context: AssetExecutionContext, io_manager: PydanticJsonIOManager, spec: ExperimentSpec
) -> dict[str, PromptCandidate | EvaluationResult]:
    """The prompts and evaluations of the optional arms the experiment lists, by asset key."""
    wanted: list[tuple[str, type[BaseModel]]] = [
        *((p.asset, PromptCandidate) for p in graph.prompts_of(spec.arms) if p.optional),
        *((a.evaluation, EvaluationResult) for a in graph.arms_of(spec.arms) if a.optional),
    ]

    def why(missing: list[str]) -> str:
        return (
            f"{spec.experiment_id} lists arms {spec.arms} but {', '.join(missing)} is not materialized. Run: "
            f"dagster asset materialize -m lsl_dagster.definitions --select "
            f"'{','.join([*missing, graph.COMPARISON])}' --partition {spec.experiment_id} (or launch the "
            "lsl_experiment_with_arms job; after adding `arms:` reload the code location)."
        )

    return _load(context, io_manager, wanted, why)  # type: ignore[return-value]


def arm_prompts(
    context: AssetExecutionContext, io_manager: PydanticJsonIOManager, spec: ExperimentSpec
) -> dict[str, PromptCandidate]:
    """Every arm's prompt, by arm name."""
    arms = graph.arms_of(spec.arms)

    def why(missing: list[str]) -> str:
        select = ",".join([*missing, context.asset_key.to_user_string()])
        return (
            f"{spec.experiment_id} evaluates sequentially, which scores every arm at once, but "
            f"{', '.join(missing)} is not materialized. Run: dagster asset materialize -m "
            f"lsl_dagster.definitions --select '{select}' --partition {spec.experiment_id}"
        )

    loaded = _load(context, io_manager, [(a.prompt, PromptCandidate) for a in arms], why)
    return {a.name: loaded[a.prompt] for a in arms}  # type: ignore[misc]
