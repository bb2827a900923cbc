"""CPU the frontend process spends per request, for servers started from different source trees.

Same load on each (open-loop Poisson from shoal's load generator), trees interleaved ABBA so that
machine noise hits both alike; the frontend's CPU comes from /proc (utime + stime) over the
measured window only, and the generator's own CPU per request is reported beside it. Use a
`git worktree` of the older commit as the other tree:

    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/frontend_cpu_ab.py --trees old=/tmp/old/src,new=src \\
        --rate-rps 1500 --model demo.tiny-16 --size-px 16 --rounds 4 --out benchmarks/results/serve-frontend-cpu/light-1500rps-session.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from shoal.client.loadgen import LoadGenerator, LoadSpec, summarise
from shoal.experiments.server_process import ServerProcess, start_server_process


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(source: str, repository: Path, model: str, workers: int, threads: int, log: Path, extra_args: tuple[str, ...] = ()) -> ServerProcess:
    server = start_server_process(
        repository, "--workers", str(workers), "--threads", str(threads), "--max-batch-size", "32", "--preload", model, *extra_args,
        log_path=log, env=dict(os.environ, PYTHONPATH=str(Path(source).resolve())),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.process.poll() is None:  # ready is not loaded: wait for the model
        if httpx.get(f"{server.url}/v2/models/{model}/ready", timeout=1.0).status_code == 200:
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{model} was not loaded within 60 s by the server from {source} (log: {log})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="name=src_dir,name=src_dir")
    parser.add_argument("--rate-rps", type=float, required=True)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repo", type=Path, default=Path(os.environ.get("SHOAL_REPO", Path.home() / ".cache/shoal/repo")))
    parser.add_argument("--model", default="demo.xlarge-128")
    parser.add_argument("--size-px", type=int, default=128)
    parser.add_argument("--layout", default="1x2", help="WORKERSxTHREADS")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    workers, threads = map(int, args.layout.split("x"))
    log = Path(tempfile.gettempdir()) / "frontend_cpu_ab.log"
    rows = []
    with LoadGenerator() as generator:
        for round_index in range(args.rounds):
            for name in list(trees) if round_index % 2 == 0 else list(reversed(trees)):
                server = serve(trees[name], args.repo, args.model, workers, threads, log)
                try:
                    spec = LoadSpec(url=server.url, model=args.model, input_name="images", input_shape=(1, 3, args.size_px, args.size_px),
                                    slo_ms=50.0, duration_s=args.duration_s, mode="open", rate_rps=args.rate_rps)  # fmt: skip
                    generator.run(dataclasses.replace(spec, duration_s=3.0))  # warm-up
                    before = cpu_s(server.process.pid)
                    stats = summarise(generator.run(spec))
                    used_s = cpu_s(server.process.pid) - before
                finally:
                    server.stop()
                rows.append({
                    "tree": name, "round": round_index,
                    "frontend_cpu_ms_per_request": round(1000 * used_s / stats.num_requests, 4),
                    "generator_cpu_ms_per_request": round(1000 * stats.generator_cpu_s / stats.num_requests, 4),
                    "goodput_rps": round(stats.goodput_rps, 1), "p99_ms": stats.p99_ms, "mean_batch": stats.mean_batch_size,
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
