"""The campaign level as software-defined assets: one partition per campaign file, fed by the comparisons of
its experiments.

No `from __future__ import annotations` here: Dagster reads the annotations at definition time.
"""

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Failure,
    Output,
    StaticPartitionMapping,
    StaticPartitionsDefinition,
    asset,
)

from lsl_dagster import RESULTS_CODE_VERSION, graph
from lsl_dagster.defs.metadata import campaign_metadata, matrix_metadata
from lsl_dagster.defs.resources import Workspace
from lsl_dagster.records import CampaignSummary, Comparison, TransferMatrix
from lsl_dagster.results.summary import ExampleScores, example_scores, summarize
from lsl_dagster.results.summary import transfer_matrix as transfer_matrix_of

CAMPAIGN_GROUP = "campaigns"


def _example_scores(comparisons: dict[str, Comparison], workspace: Workspace) -> ExampleScores:
    try:
        return example_scores(comparisons, workspace.located)
    except (OSError, ValueError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from None


def build_campaign_assets(campaigns: dict[str, list[str]], errors: dict[str, str]) -> list[AssetsDefinition]:
    """The campaign level: one partition per campaign file, fed by the comparisons of its experiments. An
    invalid campaign file is a partition too: materializing it fails with the file's error, so the UI
    shows what is wrong with it while every other campaign loads and runs."""
    experiments_of = StaticPartitionMapping({e: name for name, ids in campaigns.items() for e in ids})
    per_campaign = {
        "partitions_def": StaticPartitionsDefinition(sorted({*campaigns, *errors})),
        "group_name": CAMPAIGN_GROUP,
        "code_version": RESULTS_CODE_VERSION,
        "ins": {"comparisons": AssetIn(graph.COMPARISON, partition_mapping=experiments_of)},
    }

    @asset(name=graph.CAMPAIGN_SUMMARY, **per_campaign)
    def campaign_summary(
        context: AssetExecutionContext, workspace: Workspace, comparisons: dict[str, Comparison]
    ) -> Output[CampaignSummary]:
        """Per grid cell of a campaign: each arm's mean score and each paired difference (LSL vs the
        baselines), pooled over the paired examples of its seeds (seeds as clusters), with 95% intervals, as
        a table and a plot."""
        if context.partition_key in errors:
            raise Failure(description=errors[context.partition_key], allow_retries=False)
        # matplotlib is imported here, not with the code location: every run and `lsl` command loads
        # the code location, few draw a plot (~0.5 s of start-up saved).
        from lsl_dagster.results.plots import campaign_figure

        plot = workspace.run_dir(context.partition_key) / "campaign_summary.png"
        scores = _example_scores(comparisons, workspace)
        summary = summarize(context.partition_key, comparisons, scores, workspace.location(plot))
        campaign_figure(summary, plot)
        workspace.publish(plot)
        return Output(summary, metadata=campaign_metadata(summary))

    @asset(name=graph.TRANSFER_MATRIX, **per_campaign)
    def transfer_matrix(
        context: AssetExecutionContext, workspace: Workspace, comparisons: dict[str, Comparison]
    ) -> Output[TransferMatrix]:
        """For which (large, small) model pairs does hardening transfer? Rows = large models, columns =
        small models; each cell LSL - baseline and LSL - budget-matched across the pair's tasks, optimizers
        and seeds, pooled over their paired examples (each experiment a cluster), with 95% intervals and
        Holm-adjusted p-values, as a table and a heat map."""
        if context.partition_key in errors:
            raise Failure(description=errors[context.partition_key], allow_retries=False)
        from lsl_dagster.results.plots import (
            matrix_figure,  # matplotlib only where a plot is drawn (see above)
        )

        plot = workspace.run_dir(context.partition_key) / "transfer_matrix.png"
        scores = _example_scores(comparisons, workspace)
        matrix = transfer_matrix_of(context.partition_key, comparisons, scores, workspace.location(plot))
        matrix_figure(matrix, plot)
        workspace.publish(plot)
        return Output(matrix, metadata=matrix_metadata(matrix))

    return [campaign_summary, transfer_matrix]
