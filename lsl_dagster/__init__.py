"""lsl_dagster: Large-Small-Large prompt-optimization experiments with DSPy, as a Dagster code location."""

# Bump when a stage's behaviour changes: every materialization then shows as stale.
CODE_VERSION = "1"
# The comparison's and the campaign assets' own version: bump when how results are computed or recorded
# changes; those assets then show as stale, and the LLM stages do not.
RESULTS_CODE_VERSION = "2"
