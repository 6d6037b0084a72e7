"""How close evaluation gets to the throughput the provider allows.

    .venv/bin/python bench/throughput.py [--repeat 3] [--quick]

An evaluation (`stages.evaluate_on_large` inside `Workspace.stage`: metered engine, fresh response cache,
call log, predictions JSONL) of N generated arithmetic test examples on `openai/sim-large`, served over
HTTP by the sim server in its own process with a fixed latency L per request. With max_concurrency C no
client can beat calls * L / C; the table shows how close this one gets, for C = 1, 4 and 16.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, freeze_imports, median, parser, print_table, spread, starting_candidate

from lsl_dagster.defs.resources import Workspace
from lsl_dagster.llm.language_models import LanguageModels
from lsl_dagster.method import stages
from lsl_dagster.spec.experiment import ExperimentSpec
from lsl_dagster.tasks.task import Task, load_task

LATENCY_S = 0.05
CONCURRENCY = (1, 4, 16)
# Examples per unit of concurrency: N = this * C keeps the bound (N * L / C) the same for every C.
PER_SLOT = 80
TARGET = 1.10


@dataclass
class Server:
    url: str
    pid: int

    def _call(self, path: str, method: str = "GET") -> dict:
        request = urllib.request.Request(self.url.removesuffix("/v1") + path, method=method)
        with urllib.request.urlopen(request) as response:
            return json.load(response)

    def reset(self) -> None:
        self._call("/reset", "POST")

    def stats(self) -> dict:
        return self._call("/stats")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sim_server() -> Iterator[Server]:
    command = [sys.executable, "-m", "lsl_dagster.sim.server", "--port", "0", "--latency", str(LATENCY_S)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split("listening on ")[1].strip()
        yield Server(url, process.pid)
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Result:
    n: int
    calls: int  # requests the server answered
    wall_s: float
    bound_s: float
    client_cpu_s: float
    server_cpu_s: float
    max_in_flight: int

    @property
    def ratio(self) -> float:
        return self.wall_s / self.bound_s


def evaluation_spec(
    experiment_id: str, task: Task, server: Server, concurrency: int, n: int
) -> ExperimentSpec:
    """An experiment evaluating n test examples on the sim server's large model, `concurrency` at once."""
    model = {"model": "openai/sim-large", "api_base": server.url, "max_concurrency": concurrency}
    return ExperimentSpec(
        experiment_id=experiment_id,
        task=task.name,
        large_model=model,
        small_model=model,
        evaluation={"split": "test", "limit": n},
    )


def evaluate(server: Server, task: Task, concurrency: int, n: int) -> Result:
    spec = evaluation_spec("bench-throughput", task, server, concurrency, n)
    candidate = starting_candidate(spec, task)
    server.reset()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as runs:  # a fresh cache: every call is sent
        workspace = Workspace(data_dir=str(REPO / "data"), runs_dir=runs)
        with workspace.stage(spec, "baseline_evaluation", LanguageModels(), None) as run:
            server_cpu, client_cpu, start = server.cpu_s(), time.process_time(), time.perf_counter()
            out = Path(runs) / "predictions.jsonl"
            result = stages.evaluate_on_large(spec, task, candidate, "baseline", run, out)
            wall = time.perf_counter() - start
            client_cpu, server_cpu = time.process_time() - client_cpu, server.cpu_s() - server_cpu
    stats = server.stats()
    assert result.n == n and stats["served"] == stats["requests"], "every request answered once"
    return Result(
        n=n,
        calls=stats["served"],
        wall_s=wall,
        bound_s=stats["served"] * LATENCY_S / concurrency,
        client_cpu_s=client_cpu,
        server_cpu_s=server_cpu,
        max_in_flight=stats["max_in_flight"],
    )


def main() -> None:
    args = parser(__doc__.split("\n")[0], repeat=3).parse_args()
    freeze_imports()
    repeat, per_slot = (1, PER_SLOT // 2) if args.quick else (args.repeat, PER_SLOT)
    task = load_task("arithmetic", REPO / "data" / "tasks")
    rows = []
    verdict = ""
    with sim_server() as server:
        evaluate(server, task, 16, 32)  # warm-up: lazy imports and first-call set-up, not measured
        for c in CONCURRENCY:
            results = []
            for _ in range(repeat):
                results.append(evaluate(server, task, c, per_slot * c))
                print(f"C={c}: {results[-1]}", file=sys.stderr)
            r = results[0]
            if c == max(CONCURRENCY):
                ratio = median(x.ratio for x in results)
                verdict = f"{ratio:.3f} ({'met' if ratio <= TARGET else 'MISSED'})"
            rows.append(
                [
                    c,
                    r.n,
                    r.calls,
                    spread([x.wall_s for x in results]),
                    f"{median(x.bound_s for x in results):.2f}",
                    spread([x.ratio for x in results], "{:.3f}"),
                    f"{median(x.client_cpu_s / x.wall_s for x in results):.2f}",
                    f"{median(x.client_cpu_s / x.calls for x in results) * 1000:.2f}",
                    f"{median(x.server_cpu_s / x.wall_s for x in results):.2f}",
                    r.max_in_flight,
                ]
            )
    print_table(
        f"Evaluation throughput against the bound, L = {LATENCY_S * 1000:.0f} ms, median of {repeat}",
        [
            "C",
            "examples",
            "calls",
            "wall s",
            "bound s",
            "wall / bound",
            "client CPU",
            "client ms/call",
            "server CPU",
            "max in flight",
        ],
        rows,
        [
            "bound = calls answered * L / C: C requests always in flight, each taking exactly L.",
            "calls > examples: a reply the chat adapter cannot parse is asked again via DSPy's JSON adapter.",
            "CPU: cores used on average during the evaluation (client: this process; server: its own).",
            "client ms/call: client CPU per call; one interpreter (one GIL) tops out near 1000 / it calls/s.",
            f"Target: wall / bound <= {TARGET:.2f} at C = {max(CONCURRENCY)}: {verdict}.",
        ],
    )


if __name__ == "__main__":
    main()
