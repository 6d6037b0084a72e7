"""Scale-out: the same campaign with its steps on one Celery worker, then on two.

    .venv/bin/python bench/scaleout.py [--repeat 1] [--quick]

Per measurement, a fresh database on the machine's PostgreSQL server (127.0.0.1:5432, or LSL_TEST_POSTGRES)
and a fresh instance on it; RabbitMQ at 127.0.0.1:5672 (or LSL_TEST_BROKER) as the broker, on a queue of
its own. The campaign's experiments are materialized at once (one `dagster asset materialize` each, the
runs Dagster would start for a backfill); each worker runs one step at a time (`--concurrency=1`), so a
worker stands for one host's step slot. Both models are served by the sim server with 0.5 s latency, so
the work is waiting on the provider as with real models, not this machine's two cores. The pool allows
more LLM steps than there are workers: the workers are the limit being measured.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from _common import BIN, make_lab, materialize, median, parser, print_table, spread
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from lsl_dagster.sim.keys import data_dir_keys
from lsl_dagster.sim.server import SimServer
from lsl_dagster.spec.experiment_files import experiment_ids
from lsl_dagster_tests.cluster import CeleryWorkers, postgres_database

LATENCY_S = 0.5
SETTINGS = {
    "stage1": {"optimizer": "miprov2", "max_calls": 40},
    "stage2": {"max_calls": 30},
    "data": {"train": 10, "val": 6},
    "evaluation": {"split": "test", "limit": 24},
}


def campaign(url: str, seeds: int) -> dict:
    http = {"api_base": url, "max_concurrency": 4}
    pair = {
        "name": "l-s",
        "large_model": {"model": "openai/sim-large", **http},
        "small_model": {"model": "openai/sim-small", **http},
    }
    return {
        "tasks": ["arithmetic"],
        "model_pairs": [pair],
        "seeds": list(range(seeds)),
        "experiment": SETTINGS,
    }


def measure(workers: int, seeds: int, root: Path) -> tuple[float, int]:
    """Wall seconds from submitting the campaign to its last comparison, and the requests served."""
    lab = make_lab(root)
    keys = data_dir_keys(lab.data_dir)  # what the server plays, as in the tests
    with postgres_database() as url, SimServer(latency_s=LATENCY_S, answer_keys=keys).start() as server:
        settings = {
            "storage": {"postgres": {"postgres_url": url}},
            "telemetry": {"enabled": False},
            "concurrency": {"pools": {"default_limit": 4}},
        }
        (lab.home / "dagster.yaml").write_text(yaml.safe_dump(settings))
        lab.write_campaign("scale", campaign(server.url, seeds))
        ids = experiment_ids(lab.data_dir)
        # The schema and the pool's limit, once, before runs start together (as a deployment does).
        set_pool = [str(BIN / "dagster"), "instance", "concurrency", "set", "lsl_llm", "4"]
        subprocess.run(set_pool, env=lab.env(), check=True, capture_output=True)
        with CeleryWorkers(lab.env(), root / "workers", concurrency=1) as pool:
            for n in range(workers):
                pool.start(f"w{n}")
            time.sleep(10)  # the workers import the code location before they take steps
            start = time.perf_counter()
            runs = [
                subprocess.Popen(
                    materialize(e), env=pool.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                for e in ids
            ]
            codes = [run.wait(3600) for run in runs]
            wall = time.perf_counter() - start
        if any(codes):
            raise SystemExit(f"a run failed: exit codes {codes}")
        instance = DagsterInstance.from_config(str(lab.home))
        done = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("comparison"), asset_partitions=ids), limit=100
        ).records
        assert sorted(r.partition_key for r in done) == ids
        instance.dispose()
        return wall, server.served


def main() -> None:
    args = parser(__doc__.splitlines()[0], repeat=1).parse_args()
    seeds = 2 if args.quick else 4
    walls: dict[int, list[float]] = {1: [], 2: []}
    served: dict[int, int] = {}
    for _ in range(args.repeat):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as root:
                wall, served[workers] = measure(workers, seeds, Path(root))
            walls[workers].append(wall)
    one, two = median(walls[1]), median(walls[2])
    rows = [
        ["1 worker", spread(walls[1], "{:.0f}"), served[1], "1.00"],
        ["2 workers", spread(walls[2], "{:.0f}"), served[2], f"{two / one:.2f}"],
    ]
    print_table(
        f"Scale-out: a {seeds}-experiment campaign, sim server latency {LATENCY_S} s, Postgres + Celery",
        ["steps on", "wall s", "calls served", "wall / 1 worker"],
        rows,
        [
            f"two workers take {two / one:.0%} of one worker's time; half would be 50% "
            f"({(two - one / 2) / (one / 2):+.0%} from half)",
        ],
    )


if __name__ == "__main__":
    main()
