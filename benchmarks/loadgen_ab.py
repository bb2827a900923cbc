"""Load generators from different source trees against one `shoal serve`, interleaved (ABBA):
the generator's CPU per request, and what the server does with the CPU that leaves it.

On a 2-core machine the generator takes its CPU from the server it measures, so a cheaper
generator shows up as goodput. Each run is the generator in its own process, as `shoal bench
serve` runs it (uvloop, niceness -5 where allowed), from the tree on its PYTHONPATH.

    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/loadgen_ab.py --trees aiohttp=/tmp/old/src,pool=src --rate-rps 600 \\
        --rounds 4 --duration-s 8 --out benchmarks/results/loadgen/heavy-600-rps.json

The server always runs from this tree (`src`); `--layout`, `--model` and `--size-px` as in the
other A/B scripts (ab_servers.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import ab_parser, child_pids, cpu_s, interleaved, parse_trees, serve_tree, write_rows  # noqa: E402

_CHILD = """
import asyncio, dataclasses, json, os, sys
try:
    os.nice(-5)
except OSError:
    pass
import uvloop
from shoal.client.loadgen import LoadSpec, generate_load, summarise
spec = LoadSpec(**json.loads(sys.argv[1]))
loop = uvloop.new_event_loop()
asyncio.set_event_loop(loop)
loop.run_until_complete(generate_load(dataclasses.replace(spec, duration_s=2.0, rate_rps=spec.rate_rps / 4)))
print("START", flush=True)
run = loop.run_until_complete(generate_load(spec))
print(json.dumps(summarise(run).to_dict()), flush=True)
"""


def _children_cpu_s(pid: int) -> float:
    """CPU of `pid`'s direct children (the worker processes), from /proc."""
    total = 0.0
    for child in child_pids(pid):
        try:
            total += cpu_s(child)
        except FileNotFoundError:
            pass
    return total


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], duration_s=8.0)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    args = parser.parse_args()
    trees = parse_trees(args.trees)
    log = Path(tempfile.gettempdir()) / "loadgen_ab.log"
    rows = []
    server = serve_tree("src", args, log)
    try:
        for round_index, name in interleaved(trees, args.rounds):
            spec = {"url": server.url, "model": args.model, "input_name": "images", "input_shape": (1, 3, args.size_px, args.size_px),
                    "slo_ms": args.slo_ms, "duration_s": args.duration_s, "mode": "open", "rate_rps": args.rate_rps, "seed": round_index}  # fmt: skip
            child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(spec)], stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(Path(trees[name]).resolve())))  # fmt: skip
            assert child.stdout is not None
            while child.stdout.readline().strip() != "START":  # the warm-up is over
                if child.poll() is not None:
                    raise RuntimeError(f"the generator from {trees[name]} exited with {child.returncode}")
            frontend_before, workers_before = cpu_s(server.process.pid), _children_cpu_s(server.process.pid)
            stats = json.loads(child.stdout.readline())
            frontend_s = cpu_s(server.process.pid) - frontend_before
            workers_s = _children_cpu_s(server.process.pid) - workers_before
            child.wait()
            wall_s = stats["generator_cpu_s"] / stats["generator_cpu_fraction"] if stats["generator_cpu_fraction"] else args.duration_s
            rows.append({
                "generator": name, "round": round_index, "offered_rps": stats["offered_rps"], "goodput_rps": stats["goodput_rps"],
                "p99_ms": stats["p99_ms"], "p99_from_send_ms": stats["p99_from_send_ms"], "server_p99_ms": stats["server_p99_ms"],
                "shed_fraction": stats["shed_fraction"], "late_fraction": stats["late_fraction"], "error_fraction": stats["error_fraction"],
                "generator_cpu_ms_per_request": round(1000.0 * stats["generator_cpu_s"] / max(1, stats["num_requests"]), 4),
                "generator_cpu_fraction": stats["generator_cpu_fraction"], "generator_send_lag_p99_ms": stats["generator_send_lag_p99_ms"],
                "frontend_cpu_fraction": round(frontend_s / wall_s, 3), "workers_cpu_fraction": round(workers_s / wall_s, 3),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    write_rows(args.out, args, rows)


if __name__ == "__main__":
    main()
