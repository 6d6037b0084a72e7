"""`lsl validate`: every experiment and campaign file, checked without running anything."""

from __future__ import annotations

import argparse

from lsl_dagster.spec.experiment_files import problems, scan_campaigns


def register(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("validate", help="check every experiment and campaign file; run nothing")
    command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when every file is valid."""
    from lsl_dagster.definitions import directories

    data_dir = directories()[0]
    errors = problems(data_dir)
    for file, error in errors.items():
        print(error if error.startswith(file) else f"{file}: {error}")
    valid, _ = scan_campaigns(data_dir)
    files = sorted((data_dir / "experiments").glob("*.yaml"))
    ok = [p for p in files if str(p) not in errors]
    print(
        f"{len(ok)} of {len(files)} experiment files and {len(valid)} of "
        f"{len(list((data_dir / 'campaigns').glob('*.yaml')))} campaign files are valid"
    )
    return 1 if errors else 0
