"""An evaluation whose call log and response cache are in PostgreSQL (LSL_CACHE_URL), at max_concurrency 16.

    .venv/bin/python bench/pgstate.py [--repeat 3] [--quick] [--rtt-ms 0 2 5]

`stages.evaluate_on_large` inside `Workspace.stage` with `cache_url` set (metered engine, call log and
response cache in a fresh database on the machine's PostgreSQL server, 127.0.0.1:5432 or
LSL_TEST_POSTGRES), N generated arithmetic examples on `openai/sim-large` served by the sim server in its
own process with latency L = 50 ms; and the same with local state (SQLite files) for reference. Each
evaluation runs twice: **paid** (a new experiment id: every request is sent, logged and cached) and
**replayed** (the same id again: every answer comes from the state, no request is sent). A database on
another host is simulated by a TCP proxy in its own process that delays every chunk of bytes by RTT / 2
each way (`--rtt-ms`, default 0 = no proxy, 2 and 5).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from _common import REPO, freeze_imports, parser, print_table, spread, starting_candidate
from throughput import LATENCY_S, Server, evaluation_spec, sim_server

from lsl_dagster.defs.resources import Workspace
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.llm.state import experiment_state
from lsl_dagster.method import stages
from lsl_dagster.tasks.task import Task, load_task
from lsl_dagster_tests.cluster import postgres_database

CONCURRENCY = 16
EXAMPLES = 1280  # the bound (calls * L / C) is then about 4 s, as in throughput.py


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Forward bytes, each chunk `delay_s` after it arrived, in order, without limiting throughput."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                writer.close()
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    while data := await reader.read(65536):
        queue.put_nowait((time.monotonic() + delay_s, data))
    queue.put_nowait((time.monotonic() + delay_s, b""))
    await sender


async def _proxy(upstream_host: str, upstream_port: int, delay_s: float) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(upstream_host, upstream_port)
        await asyncio.gather(
            _pipe(client_reader, server_writer, delay_s),
            _pipe(server_reader, client_writer, delay_s),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


@contextmanager
def delayed(url: str, rtt_ms: float | None) -> Iterator[str | None]:
    """The same database behind a proxy adding `rtt_ms` to every round trip (the URL itself for 0; no
    database, local state, for None)."""
    if not rtt_ms:
        yield None if rtt_ms is None else url
        return
    parts = urlsplit(url)
    command = [sys.executable, __file__, "--proxy", f"{parts.hostname}:{parts.port}", str(rtt_ms / 2000)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        user = f"{parts.username}@" if parts.username else ""
        yield urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def peak_connections(database: str) -> Iterator[list[int]]:
    """The most connections to the database seen at once (polled every 20 ms, this poller excluded)."""
    peak = [0]
    done = threading.Event()
    con = psycopg2.connect(database)
    con.autocommit = True  # a fresh view of pg_stat_activity at each query

    def poll() -> None:
        with con.cursor() as cursor:
            while not done.wait(0.02):
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                peak[0] = max(peak[0], cursor.fetchone()[0])

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        yield peak
    finally:
        done.set()
        poller.join()
        con.close()


@dataclass
class Result:
    served: int  # requests the sim server answered
    replayed: int  # answers read back from the database
    wall_s: float
    connections: int  # the most connections to the database at once

    @property
    def calls(self) -> int:
        return self.served + self.replayed

    @property
    def per_s(self) -> float:
        return self.calls / self.wall_s


def evaluate(
    server: Server, task: Task, runs: Path, database: str, url: str | None, experiment_id: str, n: int
) -> Result:
    spec = evaluation_spec(experiment_id, task, server, CONCURRENCY, n)
    candidate = starting_candidate(spec, task)
    server.reset()
    workspace = Workspace(data_dir=str(REPO / "data"), runs_dir=str(runs), cache_url=url)
    with (
        peak_connections(database) as connections,
        workspace.stage(spec, "baseline_evaluation", LanguageModels(), None) as run,
    ):
        start = time.perf_counter()
        out = runs / experiment_id / "predictions.jsonl"
        result = stages.evaluate_on_large(spec, task, candidate, "baseline", run, out)
        wall = time.perf_counter() - start
        ledger = run.meter.ledger()
    assert result.n == n
    replays = sum(usage.replayed for usage in ledger.by_model.values())
    return Result(server.stats()["served"], replays, wall, connections[0])


def main() -> None:
    args_parser = parser(__doc__.split("\n")[0], repeat=3)
    args_parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0, 2.0, 5.0])
    args = args_parser.parse_args()
    freeze_imports()
    repeat, n = (1, EXAMPLES // 4) if args.quick else (args.repeat, EXAMPLES)
    task = load_task("arithmetic", REPO / "data" / "tasks")
    rows = []
    with (
        sim_server() as server,
        postgres_database() as database,
        tempfile.TemporaryDirectory(prefix="bench-pgstate-") as tmp,
    ):
        runs = Path(tmp)
        evaluate(
            server, task, runs, database, database, "bench-pg-warmup", 32
        )  # lazy imports, tables: not measured
        settings: list[tuple[str, float | None]] = [("local SQLite", None)]
        settings += [(f"PostgreSQL +{rtt:g} ms", rtt) for rtt in args.rtt_ms]
        for k, (label, rtt) in enumerate(settings):
            with delayed(database, rtt) as url:
                paid, replayed = [], []
                for i in range(repeat):
                    experiment_id = f"bench-pg-{k}-{i}"
                    paid.append(evaluate(server, task, runs, database, url, experiment_id, n))
                    replayed.append(evaluate(server, task, runs, database, url, experiment_id, n))
                    print(f"{label}: paid {paid[-1]}, replayed {replayed[-1]}", file=sys.stderr)
            assert all(r.replayed == 0 for r in paid) and all(r.served == 0 for r in replayed)
            assert all(r.calls == p.calls for r, p in zip(replayed, paid, strict=True)), "all replayed"
            state = experiment_state(runs, None if rtt is None else database)
            logged = [r for r in state.calls(experiment_id) if "event" not in r]
            assert len(logged) == paid[-1].served, "every paid request logged once"
            for phase, results in (("paid", paid), ("replayed", replayed)):
                rows.append(
                    [
                        label,
                        phase,
                        results[0].calls,
                        spread([r.wall_s for r in results]),
                        spread([r.per_s for r in results], "{:.0f}"),
                        f"{paid[0].calls * LATENCY_S / CONCURRENCY:.2f}" if phase == "paid" else "-",
                        max(r.connections for r in results) if rtt is not None else "-",
                    ]
                )
    print_table(
        f"Evaluation, call log and cache in PostgreSQL, C = {CONCURRENCY}, L = {LATENCY_S * 1000:.0f} ms, "
        f"{repeat} runs",
        ["state", "phase", "calls", "wall s", "calls/s", "bound s", "connections"],
        rows,
        [
            "local SQLite: LSL_CACHE_URL unset, the runs directory's files (the reference).",
            "PostgreSQL +RTT: LSL_CACHE_URL set; a proxy (own process) adds RTT / 2 each way (0: direct).",
            "paid: a new experiment id; every request sent to the sim server, logged and cached.",
            "replayed: the same evaluation again, every answer read back from the state; nothing sent.",
            "bound = calls * L / C: what the provider allows; replays have no bound but the state's.",
            "connections: the most the stage held to the database at once (its stage lock's included).",
        ],
    )


def proxy_main(argv: list[str]) -> None:
    host, port = argv[0].rsplit(":", 1)
    asyncio.run(_proxy(host, int(port), float(argv[1])))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--proxy"]:
        proxy_main(sys.argv[2:])
    else:
        main()
