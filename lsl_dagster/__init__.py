"""lsl_dagster: Large-Small-Large prompt-optimization experiments with DSPy, as a Dagster code location."""

# Bump when a stage's behaviour changes: every materialization then shows as stale.
CODE_VERSION = "1"
