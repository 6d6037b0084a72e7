"""Tasks: the task file's schema (definition), its data (data), the researcher's code (user_code), the
metrics, the generated task, and the validated Task that streams its splits (task)."""


class TaskDataError(ValueError):
    """A task file, its program or metric, or a data row is malformed; the message says where."""
