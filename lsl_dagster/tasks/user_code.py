"""A researcher's own code named by a task file (`program: program:build`, `metric: program:metric`),
imported with the task directory importable."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from lsl_dagster.tasks import TaskDataError


def resolve(task_file: Path, what: str, target: str) -> Callable[..., Any]:
    """The function `target` ("module:function") names, from the task directory or installed modules."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise TaskDataError(f"{task_file}: {what} {target!r} must be an import path module:function")
    try:
        module = _import(module_name, task_file.parent)
    except Exception as exc:
        raise TaskDataError(
            f"{task_file}: {what} {target!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
        ) from None
    value = getattr(module, attr, None)
    if not callable(value):
        raise TaskDataError(f"{task_file}: {what} {target!r}: {module_name} has no function {attr!r}")
    return value


# Modules loaded from task directories, by file: two tasks may each have a program.py.
_MODULES: dict[tuple[str, int], ModuleType] = {}


def _import(module_name: str, directory: Path) -> ModuleType:
    """`module_name` from the task directory when it is there (under a name unique to its file, with the
    directory importable for its own imports), else as an installed module."""
    relative = Path(*module_name.split("."))
    local = next(
        (
            p
            for p in (directory / relative.with_suffix(".py"), directory / relative / "__init__.py")
            if p.is_file()
        ),
        None,
    )
    if local is None:
        return importlib.import_module(module_name)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    key = (str(local.resolve()), local.stat().st_mtime_ns)
    if key not in _MODULES:
        unique = (
            f"lsl_task_{hashlib.sha256(key[0].encode()).hexdigest()[:12]}_{module_name.replace('.', '_')}"
        )
        spec = importlib.util.spec_from_file_location(unique, local)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        spec.loader.exec_module(module)
        _MODULES[key] = module
    return _MODULES[key]
