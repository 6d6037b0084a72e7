"""The deployment's settings, read from the environment in this one place (`Settings.from_env`) when the
code location or a command starts, and passed down from there.

| variable | what it sets |
|---|---|
| LSL_DATA_DIR | experiments/, campaigns/ and tasks/ (default: the repository's data/) |
| LSL_RUNS_DIR | one directory per experiment: outputs, predictions, call logs (default: <data>/runs) |
| LSL_OUTPUTS_URL | s3://bucket/prefix for asset outputs and the files they point to |
| LSL_CACHE_URL | postgresql://... for call logs, response caches and stage locks (read by name only) |
| LSL_EXECUTOR | in_process (default), multiprocess or celery |
| LSL_CELERY_BROKER, LSL_CELERY_BACKEND | the Celery broker and result backend (read when a run starts) |
| LSL_CELERY_QUEUE | the queue Celery workers listen on (default: dagster) |
| LSL_KEY_VARS | comma-separated variable names `api_key_env` may name beyond the key rules (spec.providers) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
CELERY_ENV = ("LSL_CELERY_BROKER", "LSL_CELERY_BACKEND")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    runs_dir: Path | None  # None: <data_dir>/runs
    outputs_url: str | None
    # Only whether it is set: the URL may hold a password, so Dagster reads it by name (EnvVar).
    cache_url_set: bool
    executor: str
    celery_queue: str
    celery_missing: tuple[str, ...]
    key_vars: frozenset[str]  # the operator's exceptions to the key rules

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        data_dir = Path(environ.get("LSL_DATA_DIR") or PROJECT_DIR / "data")
        return cls(
            data_dir=data_dir,
            runs_dir=Path(environ["LSL_RUNS_DIR"]) if environ.get("LSL_RUNS_DIR") else None,
            outputs_url=environ.get("LSL_OUTPUTS_URL") or None,
            cache_url_set=bool(environ.get("LSL_CACHE_URL")),
            executor=environ.get("LSL_EXECUTOR", "in_process"),
            celery_queue=environ.get("LSL_CELERY_QUEUE", "dagster"),
            celery_missing=tuple(name for name in CELERY_ENV if not environ.get(name)),
            key_vars=frozenset(n.strip() for n in environ.get("LSL_KEY_VARS", "").split(",") if n.strip()),
        )

    def validation_context(self) -> dict[str, frozenset[str]]:
        """What validating an experiment or campaign file needs of the settings (a Pydantic context)."""
        return {"key_vars": self.key_vars}
