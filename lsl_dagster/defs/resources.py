"""Where experiments, tasks and results live, and the per-stage runtime: budgets, call log, cache, LMs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

from dagster import ConfigurableResource

from lsl_dagster.defs.continuity import MATERIALIZED, Earlier, check_state, marker
from lsl_dagster.llm.cache import experiment_cache
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.ledger import Meter, spent_usd
from lsl_dagster.llm.pg_state import PostgresState
from lsl_dagster.llm.state import LocalState, experiment_state
from lsl_dagster.method.plan import check, forecast
from lsl_dagster.method.progress import ticking
from lsl_dagster.method.run import StageRun
from lsl_dagster.records import Ledger
from lsl_dagster.settings import PROJECT_DIR
from lsl_dagster.spec.campaign import CampaignSpec
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.spec.experiment_files import load_experiment, scan_campaigns
from lsl_dagster.storage import outputs as storage
from lsl_dagster.storage.files import atomic_write_text
from lsl_dagster.tasks.task import Task, load_task


class Workspace(ConfigurableResource):
    """data_dir holds experiments/ and tasks/; runs_dir holds one directory per experiment. To scale past
    one disk: outputs_url (s3://bucket/prefix, LSL_OUTPUTS_URL) receives the files outputs point to
    (predictions, plots), and cache_url (postgresql://..., LSL_CACHE_URL) holds the call logs, response
    caches and stage locks (lsl_dagster.llm.state); the runs directory is then each worker's scratch."""

    data_dir: str = str(PROJECT_DIR / "data")
    runs_dir: str = str(PROJECT_DIR / "data" / "runs")
    outputs_url: str | None = None
    cache_url: str | None = None

    def experiment(self, experiment_id: str) -> ExperimentSpec:
        return load_experiment(Path(self.data_dir), experiment_id)

    def task(self, name: str) -> Task:
        return load_task(name, Path(self.data_dir) / "tasks")

    def run_dir(self, experiment_id: str) -> Path:
        return Path(self.runs_dir) / experiment_id

    def state(self) -> LocalState | PostgresState:
        return experiment_state(Path(self.runs_dir), self.cache_url)

    def relative(self, path: Path) -> str:
        """A path under the runs directory as stored in outputs: relative to it, so that moving the runs
        directory (LSL_RUNS_DIR) keeps every stored path valid."""
        return path.relative_to(self.runs_dir).as_posix()

    def location(self, path: Path) -> str:
        """Where a file this step writes under the runs directory is kept for every worker and the CLI: the
        same place under outputs_url when that is set (its URL), else the file itself (stored relative)."""
        if self.outputs_url is None:
            return self.relative(path)
        return storage.join(self.outputs_url, *Path(self.relative(path)).parts)

    def publish(self, path: Path) -> str:
        """Copy a finished file to its location (see `location`); returns the location to store."""
        location = self.location(path)
        if self.outputs_url is not None:
            storage.upload(path, location)
        return location

    def located(self, stored: str) -> str:
        """A stored location as storage reads it: a URL as it is, a relative path under the runs directory."""
        return storage.located(stored, self.runs_dir)

    @contextmanager
    def stage(
        self,
        spec: ExperimentSpec,
        name: str,
        models: LanguageModels,
        max_calls: int | None,
        *,
        task: Task | None = None,
        run_id: str | None = None,
        earlier: Sequence[Earlier] = (),
        log: Callable[[str], None] | None = None,
    ) -> Iterator[StageRun]:
        """Run one stage of an experiment.

        Keys, prices and the cost cap's allocation are checked before any call. One stage of an
        experiment runs at a time (a lock, lsl_dagster.llm.state), so the experiment's max_cost_usd holds
        across processes and hosts: the stage may spend its share of the cap, within what the call log
        says is left (and within what its campaign's max_cost_usd has left, see campaign_budget). What
        the stage paid since it last completed (a crashed attempt) is part of its usage; those
        responses, and any request another stage already paid for, replay from the experiment's
        response cache for free.
        The ledger is written when the stage ends, also when it fails.
        Before that, the state must hold the markers of the `earlier` stages the instance says were
        materialized (lsl_dagster.defs.continuity): otherwise ForeignState, before any call. `run_id` names
        the Dagster run in this stage's own marker. With `log` (the run's logger), the stage's progress
        lines (method.progress) go there.
        """
        models.check(spec)
        # Loaded (every split read and checked, the metric run) once for the stage: the allowance's
        # forecast and the providers that read answer keys use this one.
        task = task or self.task(spec.task)
        run_dir = self.run_dir(spec.experiment_id)
        run_dir.mkdir(parents=True, exist_ok=True)  # this worker's ledgers; shared state is in `state`
        state = self.state()
        with state.exclusive(spec.experiment_id), ExitStack() as held:
            records = list(state.calls(spec.experiment_id))
            check_state(spec.experiment_id, records, earlier, state.where)
            prior: list[dict] = []
            for record in records:
                if record["stage"] == name:
                    if record.get("event") == MATERIALIZED:
                        prior.clear()
                    elif "event" not in record:
                        prior.append(record)
            calls = [r for r in records if "event" not in r]
            allowance = self._allowance(spec, task, name, calls, prior)
            campaign = self._capped_campaign(spec.experiment_id)
            if campaign is not None:
                capped, experiments = campaign
                assert capped.max_cost_usd is not None
                allowance = held.enter_context(
                    state.campaign_allowance(
                        capped.campaign,
                        capped.max_cost_usd,
                        experiments,
                        f"{spec.experiment_id}--{name}",
                        allowance,
                    )
                )
            # Open until the stage ends, closed by `held` before its allowance and lock are released.
            call_log = held.enter_context(closing(state.call_log(spec.experiment_id)))
            store = held.enter_context(closing(state.responses(spec.experiment_id)))
            meter = Meter(name, max_calls=max_calls, cost_allowance_usd=allowance, log=call_log, prior=prior)
            meter.simulated_models({r["model"] for r in calls if r.get("simulated")})
            run = StageRun(spec, meter, models, lambda: task)
            try:
                with (
                    experiment_cache(store, meter),
                    ticking(name, meter, run.progress, log, simulated=spec.simulated),
                ):
                    yield run
                meter.wait_idle()
                call_log.append(marker(name, run_id))
            finally:
                meter.close()
                meter.wait_idle()
                run.close()
                atomic_write_text(
                    run_dir / "ledgers" / f"{name}.json", meter.ledger().model_dump_json(indent=2)
                )

    def _capped_campaign(self, experiment_id: str) -> tuple[CampaignSpec, list[str]] | None:
        """The campaign with its own max_cost_usd that this experiment belongs to, with its experiments."""
        for campaign, specs in scan_campaigns(Path(self.data_dir), only_capped=True)[0].values():
            if experiment_id in specs:
                return campaign, sorted(specs)
        return None

    def _allowance(
        self, spec: ExperimentSpec, task: Task, name: str, calls: list[dict], prior: list[dict]
    ) -> float | None:
        """What the stage may still spend: its share of max_cost_usd (allocated up front by the plan, so
        the evaluations always have theirs) less what its earlier attempts spent, and never more than the
        cap has left. Raises ConfigError, before any call, when the cap cannot cover the evaluations or a
        stage's max_calls cannot buy one step of its optimizer (see plan.forecast)."""
        plan = forecast(spec, task)
        check(plan)
        if spec.max_cost_usd is None:
            return None
        left = max(0.0, spec.max_cost_usd - spent_usd(calls))
        share = plan.share(name)
        if share is None:
            return left
        return min(left, max(0.0, share - spent_usd(prior)))

    def saved_ledger(self, experiment_id: str, name: str) -> Ledger | None:
        path = self.run_dir(experiment_id) / "ledgers" / f"{name}.json"
        return Ledger.model_validate_json(path.read_text()) if path.exists() else None
