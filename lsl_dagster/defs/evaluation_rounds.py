"""Which sequential decision an evaluation uses: the one recorded for the experiment's current prompts, or
one made now by running the rounds (method.sequential) as their own stage."""

from collections.abc import Callable
from contextlib import AbstractContextManager, closing

from dagster import AssetExecutionContext

from lsl_dagster import graph
from lsl_dagster.defs.io_managers import PydanticJsonIOManager
from lsl_dagster.defs.resources import Workspace
from lsl_dagster.defs.stored import arm_prompts
from lsl_dagster.method import sequential
from lsl_dagster.method.plan import forecast
from lsl_dagster.method.run import StageRun
from lsl_dagster.method.stages import decision_key
from lsl_dagster.records import SequentialDecision
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.tasks.task import Task


def sequential_decision(
    context: AssetExecutionContext,
    workspace: Workspace,
    io_manager: PydanticJsonIOManager,
    spec: ExperimentSpec,
    task: Task,
    rounds_stage: Callable[[], AbstractContextManager[StageRun]],
) -> SequentialDecision:
    """The decision the call log records for the current prompts (an earlier evaluation made it), else
    the rounds are run in `rounds_stage` and their decision recorded. A run killed during the rounds
    replays them from the cache up to where it was, paying nothing twice."""
    prompts = arm_prompts(context, io_manager, spec)
    key = decision_key(spec, prompts)
    decision = sequential.recorded(workspace.state().calls(spec.experiment_id), key)
    if decision is not None:
        context.log.info(f"{graph.ROUNDS}: using the decision recorded for these prompts ({key})")
        return decision
    worst = forecast(spec, task).worst_usd_per_example
    with rounds_stage() as run:
        decision = sequential.evaluate_in_rounds(spec, task, prompts, run, key, worst)
    with closing(workspace.state().call_log(spec.experiment_id)) as log:
        log.append(sequential.record(decision))
    context.log.info(
        f"{graph.ROUNDS}: stopped at {decision.examples} of {decision.population} examples per arm after "
        f"{decision.rounds} rounds ({decision.reason})"
    )
    return decision
