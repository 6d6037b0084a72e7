"""The sim is a test double behind the provider interface: the product reaches it through one table only,
and the sim's model of skill reads nothing of the project."""

from __future__ import annotations

import ast
from pathlib import Path

import lsl_dagster

PACKAGE = Path(lsl_dagster.__file__).resolve().parent
SIM = PACKAGE / "sim"
# Where the sim meets the project: the provider, its answer keys from the tasks, its server and the wire
# format it shares with the metered engine. The rest is the sim's model, which knows no project module.
SIM_BRIDGES = {"provider.py", "keys.py", "server.py", "http.py", "engine.py"}


def imported(path: Path) -> set[str]:
    """Every module `path` imports, spelled out: `from a import b` counts as `a` and `a.b`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def _is_sim(name: str) -> bool:
    return name == "lsl_dagster.sim" or name.startswith("lsl_dagster.sim.")


def test_only_the_provider_table_imports_the_sim():
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if SIM not in path.parents and any(_is_sim(name) for name in imported(path))
    }
    assert importers == {"llm/providers.py"}


def test_import_forms_are_all_seen(tmp_path):
    # The check above would pass vacuously if it missed a spelling of the import.
    for source in (
        "import lsl_dagster.sim.engine",
        "from lsl_dagster import sim",
        "from lsl_dagster.sim import x",
    ):
        path = tmp_path / "module.py"
        path.write_text(source + "\n")
        assert any(_is_sim(name) for name in imported(path)), source


def test_the_sims_model_reads_nothing_of_the_project():
    for path in SIM.glob("*.py"):
        if path.name not in SIM_BRIDGES:
            project = {n for n in imported(path) if n.startswith("lsl_dagster") and not _is_sim(n)}
            assert not project, f"sim/{path.name} imports {sorted(project)}"
