"""What Triton's system shared-memory extension saves a same-host client: one `shoal serve`, the
same open-loop load with the input in the request body (Triton's binary extension, what
`shoal bench serve` sends) and named by a registered shared-memory region, interleaved (ABBA)
at each rate, with the frontend's and the load generator's CPU from /proc.

    .venv/bin/python benchmarks/shared_memory_ab.py --rates-rps 150,300,420 --rounds 4 --duration-s 8 \\
        --out benchmarks/results/serve-shared-memory/heavy.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import uuid
from multiprocessing import shared_memory
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import cpu_s, interleaved, serve, write_rows  # noqa: E402

from shoal.client.loadgen import LoadGenerator, LoadSpec, input_bytes, summarise  # noqa: E402

REGION = "bench-input"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates-rps", default="150,300,420", help="comma-separated open-loop rates")
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--repo", type=Path, default=Path(os.environ.get("SHOAL_REPO", Path.home() / ".cache/shoal/repo")))
    parser.add_argument("--model", default="demo.xlarge-128")
    parser.add_argument("--size-px", type=int, default=128)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates_rps.split(",")]
    log = Path(tempfile.gettempdir()) / "shared_memory_ab.log"
    base = LoadSpec(url="", model=args.model, input_name="images", input_shape=(1, 3, args.size_px, args.size_px),
                    slo_ms=args.slo_ms, duration_s=args.duration_s, rate_rps=rates[0])  # fmt: skip
    data = input_bytes(base)
    region = shared_memory.SharedMemory(name=f"shoal-bench-{uuid.uuid4().hex[:12]}", create=True, size=len(data))
    region.buf[: len(data)] = data
    server = serve("src", args.repo, args.model, 2, 1, log, ("--burst-threads", "2"))
    rows = []
    try:
        httpx.post(f"{server.url}/v2/systemsharedmemory/region/{REGION}/register",
                   json={"key": "/" + region.name, "offset": 0, "byte_size": len(data)}).raise_for_status()  # fmt: skip
        with LoadGenerator(priority_boost=True) as generator:
            base = dataclasses.replace(base, url=server.url)
            generator.run(dataclasses.replace(base, duration_s=2.0, rate_rps=rates[0] / 2))  # warm-up
            for rate in rates:
                for round_index, transport in interleaved(["body", "shared_memory"], args.rounds):
                    spec = dataclasses.replace(base, rate_rps=rate, seed=round_index,
                                               shared_memory_region=REGION if transport == "shared_memory" else None)  # fmt: skip
                    before = (cpu_s(server.process.pid), cpu_s(generator.pid), time.monotonic())
                    stats = summarise(generator.run(spec))
                    wall_s = time.monotonic() - before[2]
                    frontend_s, generator_s = cpu_s(server.process.pid) - before[0], cpu_s(generator.pid) - before[1]
                    row = {
                        "transport": transport, "rate_rps": rate, "round": round_index,
                        "goodput_rps": round(stats.goodput_rps, 1), "shed_fraction": round(stats.shed_fraction, 4),
                        "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms,
                        "frontend_cores": round(frontend_s / wall_s, 3), "generator_cores": round(generator_s / wall_s, 3),
                        # per request sent (answered or refused: both are read and parsed)
                        "frontend_cpu_ms_per_request": round(1000.0 * frontend_s / max(1, stats.num_requests), 3),
                    }  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        server.stop()
        region.close()
        region.unlink()
    write_rows(args.out, args, rows, cores=os.cpu_count())


if __name__ == "__main__":
    main()
