"""The experiment as software-defined assets, one partition per experiment id.

No `from __future__ import annotations` here: Dagster reads the annotations at definition time.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    AssetObservation,
    AssetsDefinition,
    DataVersion,
    DataVersionsByPartition,
    Failure,
    Output,
    PartitionsDefinition,
    ResourceParam,
    RetryRequested,
    SourceAsset,
    StaticPartitionMapping,
    asset,
    observable_source_asset,
)

from lsl_dagster import CODE_VERSION, RESULTS_CODE_VERSION, graph
from lsl_dagster.defs.continuity import STAGE_KEY, STATE_KEY, ForeignState, earlier_stages
from lsl_dagster.defs.evaluation_rounds import sequential_decision
from lsl_dagster.defs.io_managers import PydanticJsonIOManager
from lsl_dagster.defs.metadata import (
    comparison_metadata,
    evaluation_metadata,
    hardening_metadata,
    ledger_metadata,
    prompt_metadata,
)
from lsl_dagster.defs.resources import Workspace
from lsl_dagster.defs.stored import optional_outputs
from lsl_dagster.llm.engine import AccessDenied, ProviderUnavailable, StructuredOutputsRejected
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import BudgetExhausted
from lsl_dagster.llm.provider import ConfigError
from lsl_dagster.method import comparison as comparison_stage
from lsl_dagster.method import stages
from lsl_dagster.method.evaluation import ProgramErrors
from lsl_dagster.method.optimizers.metrics import MetricFailed
from lsl_dagster.method.optimizers.unparseable import OptimizerOutputError
from lsl_dagster.method.plan import forecast
from lsl_dagster.method.run import StageRun
from lsl_dagster.records import Comparison, EvaluationResult, PromptCandidate
from lsl_dagster.results.instance import FILE
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.spec.experiment_files import ExperimentError, check_fits, spec_versions
from lsl_dagster.tasks.task import Task, TaskDataError

# Steps that call LLMs take a slot of this Dagster concurrency pool (limit set on the instance).
POOL = "lsl_llm"
GROUP = "lsl"  # one experiment's assets, partitioned by experiment
ARMS_GROUP = "lsl_arms"  # the optional arms' assets (graph.OPTIONAL_ARMS), for the experiments that list them


def _load(workspace: Workspace, experiment_id: str) -> tuple[ExperimentSpec, Task]:
    try:
        spec = workspace.experiment(experiment_id)
        task = workspace.task(spec.task)
        check_fits(spec, task)
        return spec, task
    except (ExperimentError, TaskDataError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from None


@contextmanager
def _stage(
    context: AssetExecutionContext,
    workspace: Workspace,
    models: LanguageModels,
    spec: ExperimentSpec,
    task: Task,
    name: str,
    max_calls: int | None,
) -> Iterator[StageRun]:
    """A stage's runtime, with its failures turned into clean Dagster failures carrying the ledger. Its
    materialization records where the experiment's state is, for the stages after it to check. It calls
    LLMs only while holding one of the pool's slots (see `_pool_slot`)."""
    # The experiment file is observed, never materialized: no stage state of its own to check.
    deps = context.assets_def.asset_deps[context.asset_key]
    read = [key.to_user_string() for key in deps if key != FILE]
    earlier = earlier_stages(
        context.instance, context.partition_key, [context.asset_key.to_user_string(), *read]
    )
    try:
        with (
            _pool_slot(context, workspace),
            workspace.stage(
                spec,
                name,
                models,
                max_calls,
                task=task,
                run_id=context.run.run_id,
                earlier=earlier,
                log=context.log.info,
            ) as run,
        ):
            yield run
    except ForeignState as exc:
        metadata = {
            "this_worker_state": exc.here,
            "earlier_state": ", ".join(sorted({e.state for e in exc.earlier})),
        }
        raise Failure(description=str(exc), metadata=metadata, allow_retries=False) from None
    except ConfigError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    except (OptimizerOutputError, ProgramErrors, MetricFailed) as exc:
        # Retrying replays the same replies from the cache: only a change to the experiment file, or to the
        # task's program or metric, helps.
        raise Failure(
            description=str(exc), metadata=_saved_ledger(workspace, spec, name), allow_retries=False
        ) from None
    except BudgetExhausted as exc:
        raise Failure(
            description=f"{exc} before {name} had a result to keep; nothing was saved as its output",
            metadata=_saved_ledger(workspace, spec, name),
            allow_retries=False,
        ) from None
    except StructuredOutputsRejected as exc:
        raise Failure(
            description=f"{name}: {exc}", metadata=_saved_ledger(workspace, spec, name), allow_retries=False
        ) from None
    except AccessDenied as exc:
        raise Failure(
            description=f"{name}: {exc}. Check the key and the account's credit; nothing was retried.",
            metadata=_saved_ledger(workspace, spec, name),
            allow_retries=False,
        ) from None
    except ProviderUnavailable as exc:
        if context.retry_number < models.step_retries:
            # Calls already paid for replay from the cache on the retry.
            raise RetryRequested(
                max_retries=models.step_retries, seconds_to_wait=models.step_retry_delay_s
            ) from exc
        raise Failure(
            description=f"{name}: the provider kept failing after retries ({exc})",
            metadata=_saved_ledger(workspace, spec, name),
        ) from None
    context.add_output_metadata({STATE_KEY: workspace.state().where, STAGE_KEY: name})


@contextmanager
def _pool_slot(context: AssetExecutionContext, workspace: Workspace) -> Iterator[None]:
    """One of the lsl_llm pool's slots, taken by the project itself beside Dagster's claim: Dagster's
    SQLite storage can hand one slot to two steps that claim it at the same instant, and these locks
    cannot (lsl_dagster.llm.state). Taken before the experiment's stage lock, by every step the same way,
    so no two steps wait for each other. No limit on the instance: no slot to take."""
    storage = context.instance.event_log_storage
    limit = storage.get_concurrency_info(POOL).limit if storage.supports_global_concurrency_limits else None
    with ExitStack() as held:
        if limit:
            taken = held.enter_context(workspace.state().slot(POOL, limit))
            context.log.info(f"{POOL} slot {taken + 1} of {limit} taken")
            # Logged while still held (the stack unwinds last in, first out): the slot's log lines bound
            # exactly the time the step could call LLMs, which Dagster's step events do not.
            held.callback(context.log.info, f"{POOL} slot {taken + 1} of {limit} released")
        yield


def _saved_ledger(workspace: Workspace, spec: ExperimentSpec, name: str) -> dict:
    ledger = workspace.saved_ledger(spec.experiment_id, name)
    return ledger_metadata(ledger) if ledger is not None else {}


def _plan_metadata(workspace: Workspace, experiment_id: str) -> dict:
    try:
        spec = workspace.experiment(experiment_id)
        task = workspace.task(spec.task)
    except (ExperimentError, TaskDataError):
        return {}  # the stages report an invalid file; the observation only versions it
    plan = forecast(spec, task)
    metadata: dict = {key: value for key, value in plan.metadata().items() if value is not None}
    if plan.refusal:
        metadata["plan_refusal"] = plan.refusal
    return metadata


Read = dict[str, PromptCandidate]  # the prompts a prompt stage reads, by asset key


@dataclass(frozen=True)
class PromptMethod:
    """How a prompt stage of the graph runs: the calls it may make and the prompt it makes, from the
    prompts it reads (graph.Prompt.reads)."""

    max_calls: Callable[[ExperimentSpec, Read], int]
    optimize: Callable[[ExperimentSpec, Task, Read, StageRun], PromptCandidate]
    description: str  # the asset's description in the UI


# Each prompt stage of graph.PROMPTS by its stage name.
PROMPT_METHODS = {
    graph.STAGE1.stage: PromptMethod(
        max_calls=lambda spec, read: spec.stage1.max_calls,
        optimize=lambda spec, task, read, run: stages.stage1_optimize(spec, task, run),
        description="Stage 1: the task program optimized on the large model (MIPROv2 by default).",
    ),
    graph.STAGE2.stage: PromptMethod(
        max_calls=lambda spec, read: spec.stage2.max_calls,
        optimize=lambda spec, task, read, run: stages.stage2_harden(
            spec, task, read[graph.STAGE1.asset], run
        ),
        description="Stage 2: the Stage 1 prompt hardened against the small model by `stage2.optimizer` "
        "(GEPA by default; MIPROv2 or SIMBA).",
    ),
    graph.BUDGET_MATCHED.stage: PromptMethod(
        max_calls=lambda spec, read: stages.matched_budget(*read.values()),
        optimize=lambda spec, task, read, run: stages.budget_matched_optimize(spec, task, run),
        description="FR-006: the Stage 1 optimizer on the large model with the calls Stage 1 + Stage 2 used.",
    ),
    graph.SMALL_OPTIMIZED.stage: PromptMethod(
        max_calls=lambda spec, read: spec.stage1.max_calls,
        optimize=lambda spec, task, read, run: stages.small_optimize(spec, task, run),
        description="Optional arm small_optimized: the Stage 1 optimizer and budget on the small model alone "
        "(GEPA's Table 2 setting), for experiments with `arms: [small_optimized]`.",
    ),
}


def build_assets(
    partitions: PartitionsDefinition, listing: dict[str, list[str]] | None = None
) -> list[AssetsDefinition | SourceAsset]:
    """Every stage asset of graph.ALL_STAGES. `listing`: per optional arm, the experiments whose file lists
    it; only their comparisons depend on its evaluation (known when the code location loads)."""
    listing = listing or {}

    @observable_source_asset(name=FILE.to_user_string(), partitions_def=partitions, group_name=GROUP)
    def experiment_file(context, workspace: Workspace) -> DataVersionsByPartition:
        """data/experiments/<experiment_id>.yaml (or its campaign's cell). Its version is the validated
        spec's hash, so editing a file marks exactly that experiment's assets stale."""
        # A run of one experiment observes just that one: every run observing every file would grow the
        # event log with the square of a campaign's size.
        keys = [context.partition_key] if context.has_partition_key else partitions.get_partition_keys()
        versions = spec_versions(Path(workspace.data_dir), keys)
        if context.has_partition_key:
            # The forecast (lsl plan) of the experiment about to run, logged before its versioned observation.
            metadata = _plan_metadata(workspace, context.partition_key)
            if metadata:
                context.log_event(
                    AssetObservation(
                        asset_key=context.asset_key, partition=context.partition_key, metadata=metadata
                    )
                )
        return DataVersionsByPartition({key: DataVersion(version) for key, version in versions.items()})

    # Every stage reads the experiment file, so each depends on it: editing the file marks them all stale.
    common = {
        "partitions_def": partitions,
        "group_name": GROUP,
        "code_version": CODE_VERSION,
        "deps": [experiment_file],
    }

    def group(optional: bool) -> dict:
        return {**common, "group_name": ARMS_GROUP if optional else GROUP}

    def prompt_asset(prompt: graph.Prompt) -> AssetsDefinition:
        method = PROMPT_METHODS[prompt.stage]
        ins = {name: AssetIn(name, dagster_type=PromptCandidate) for name in prompt.reads}

        # One keyword argument per prompt it reads, named by its asset key (Dagster passes exactly `ins`).
        @asset(
            name=prompt.asset,
            pool=POOL,
            ins=ins,
            description=method.description,
            **group(prompt.optional),
        )
        def _prompt(
            context: AssetExecutionContext,
            workspace: Workspace,
            language_models: LanguageModels,
            **read: PromptCandidate,
        ) -> Output[PromptCandidate]:
            spec, task = _load(workspace, context.partition_key)
            budget = method.max_calls(spec, read)
            with _stage(context, workspace, language_models, spec, task, prompt.stage, budget) as run:
                candidate = method.optimize(spec, task, read, run)
            metadata = prompt_metadata(candidate, task, spec)
            if prompt.starts_from is not None:
                metadata |= hardening_metadata(read[prompt.starts_from], candidate)
            return Output(candidate, metadata=metadata)

        return _prompt

    def evaluation_asset(arm: graph.Arm) -> AssetsDefinition:
        description = (
            f"The {arm.prompt} prompt on the large model over the held-out split (arm '{arm.name}')."
        )
        # After every prompt of its experiment (graph.waits_for); an optional arm's only in the experiments
        # listing it.
        waits = [
            *(AssetDep(p) for p in graph.waits_for() if p != arm.prompt),
            *(
                AssetDep(a.prompt, partition_mapping=StaticPartitionMapping({e: e for e in listing[a.name]}))
                for a in graph.ALL_ARMS
                if a.optional and listing.get(a.name) and a.prompt != arm.prompt
            ),
        ]

        @asset(
            name=arm.evaluation,
            pool=POOL,
            ins={"candidate": AssetIn(arm.prompt)},
            description=description,
            **{**group(arm.optional), "deps": [*common["deps"], *waits]},
        )
        def _evaluation(
            context: AssetExecutionContext,
            workspace: Workspace,
            language_models: LanguageModels,
            io_manager: ResourceParam[PydanticJsonIOManager],
            candidate: PromptCandidate,
        ) -> Output[EvaluationResult]:
            spec, task = _load(workspace, context.partition_key)
            out = workspace.run_dir(spec.experiment_id) / "predictions" / f"{arm.name}.jsonl"

            def rounds() -> AbstractContextManager[StageRun]:
                return _stage(context, workspace, language_models, spec, task, graph.ROUNDS, None)

            decision = (
                None
                if spec.evaluation.sequential is None
                else sequential_decision(context, workspace, io_manager, spec, task, rounds)
            )
            with _stage(context, workspace, language_models, spec, task, arm.evaluation, None) as run:
                result = stages.evaluate_on_large(spec, task, candidate, arm.name, run, out, decision)
            # Where every worker and the CLI reach them (object storage when outputs are there).
            result = result.model_copy(update={"predictions_path": workspace.publish(out)})
            return Output(result, metadata=evaluation_metadata(result, spec))

        return _evaluation

    comparison_ins = {
        **{p.asset: AssetIn(p.asset, dagster_type=PromptCandidate) for p in graph.PROMPTS},
        **{a.evaluation: AssetIn(a.evaluation, dagster_type=EvaluationResult) for a in graph.ARMS},
    }

    # An optional arm's evaluation is a dependency of just the comparisons of the experiments listing it
    # (one partition each); they read it from storage below, since the others have no such input.
    optional_deps = [
        AssetDep(
            arm.evaluation,
            partition_mapping=StaticPartitionMapping({e: e for e in listing[arm.name]}),
        )
        for arm in graph.ALL_ARMS
        if arm.optional and listing.get(arm.name)
    ]
    comparison_common = {
        **common,
        "code_version": RESULTS_CODE_VERSION,
        "deps": [*common["deps"], *optional_deps],
    }

    # Every prompt and evaluation as a keyword argument named by its asset key (exactly `ins`).
    @asset(name=graph.COMPARISON, ins=comparison_ins, **comparison_common)
    def comparison(
        context: AssetExecutionContext,
        workspace: Workspace,
        io_manager: ResourceParam[PydanticJsonIOManager],
        **read: PromptCandidate | EvaluationResult,
    ) -> Output[Comparison]:
        """Baseline vs LSL vs budget-matched baseline (and the optional arms the experiment lists): scores,
        paired differences with CIs, usage."""
        spec, _ = _load(workspace, context.partition_key)
        read |= optional_outputs(context, io_manager, spec)
        prompts = {p.asset: read[p.asset] for p in graph.prompts_of(spec.arms)}
        evaluations = {a.evaluation: read[a.evaluation] for a in graph.arms_of(spec.arms)}
        try:
            result = comparison_stage.compare(spec, prompts, evaluations, workspace.located)
        except comparison_stage.InconsistentArms as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        return Output(result, metadata=comparison_metadata(result, spec))

    return [
        experiment_file,
        *map(prompt_asset, graph.ALL_PROMPTS),
        *map(evaluation_asset, graph.ALL_ARMS),
        comparison,
    ]
