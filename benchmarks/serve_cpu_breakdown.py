"""Where the machine's cores go while `shoal serve` runs at a fixed open-loop rate: CPU of the
frontend, of each worker process and of the load generator (from /proc), the cores left idle
(/proc/stat), how much of the time the workers spent inside ONNX Runtime by their own clock
(`shoal_compute_seconds`), and the admission margin the server learnt. Interleaved over trees
as the other A/B scripts (see ab_servers.py for tree specs).

    .venv/bin/python benchmarks/serve_cpu_breakdown.py --trees 'main=src+--burst-threads+2' --layout 2x1 \\
        --rate-rps 1272 --rounds 2 --out benchmarks/results/serve-cpu-breakdown/heavy-1272-rps.json
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import ab_parser, child_pids, cpu_s, parse_trees, warmed_up_servers, write_rows  # noqa: E402

from shoal.client.loadgen import LoadGenerator, summarise  # noqa: E402


def _idle_and_total_ticks() -> tuple[int, int]:
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[3] + values[4], sum(values)  # idle + iowait


def _metric_sum(text: str, name: str) -> float:
    return sum(float(match.group(1)) for match in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], duration_s=8.0)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    args = parser.parse_args()
    trees = parse_trees(args.trees)
    log = Path(tempfile.gettempdir()) / "serve_cpu_breakdown.log"
    cores = os.cpu_count() or 1
    rows = []
    with LoadGenerator(priority_boost=True) as generator, contextlib.closing(warmed_up_servers(trees, args, log, generator)) as rounds:
        for round_index, name, server, spec in rounds:  # closing: a failure stops the server at once
            frontend, workers = server.process.pid, child_pids(server.process.pid)
            processes = [frontend, *workers, generator.pid]
            before = {pid: cpu_s(pid) for pid in processes}
            idle_before, total_before = _idle_and_total_ticks()
            metrics_before = httpx.get(f"{server.url}/metrics").text
            started = time.monotonic()
            run = generator.run(spec)
            wall_s = time.monotonic() - started
            after = {pid: cpu_s(pid) for pid in processes}
            idle_after, total_after = _idle_and_total_ticks()
            metrics_after = httpx.get(f"{server.url}/metrics").text
            used = {pid: round((after[pid] - before[pid]) / wall_s, 3) for pid in processes}
            margin = re.search(r'^shoal_admission_error_seconds\{priority="0",[^}]*\} (\S+)$', metrics_after, re.M)
            computing_s = _metric_sum(metrics_after, "shoal_compute_seconds_sum") - _metric_sum(metrics_before, "shoal_compute_seconds_sum")
            row = {
                "tree": name,
                "round": round_index,
                "goodput_rps": round(summarise(run).goodput_rps, 1),
                "frontend_cores": used[frontend],
                # the resource tracker is a child too: only processes that did work are workers
                "worker_cores": [used[pid] for pid in workers if used[pid] > 0.01],
                "generator_cores": used[generator.pid],
                "idle_cores": round(cores * (idle_after - idle_before) / max(1, total_after - total_before), 3),
                "worker_compute_wall_cores": round(computing_s / wall_s, 3),
                "admission_margin_ms_at_end": round(float(margin.group(1)) * 1000.0, 1) if margin else None,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_rows(args.out, args, rows, cores=cores)


if __name__ == "__main__":
    main()
