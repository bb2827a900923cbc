"""Event-loop lag while the edge planner runs on a thread vs in a planner process.

The live edge controller re-plans every 0.5 s; `shoal` takes up to ~0.4 s at 4-8 workers. On a
thread it holds the GIL in 5 ms slices and the server's event loop waits. This plans eight
4 workers x 32 clients grid instances back to back each way (twice, interleaved) while an
asyncio task measures how late `asyncio.sleep(0.001)` wakes up.

    .venv/bin/python benchmarks/edge_planner_loop_lag.py
"""

import asyncio
import json
import statistics
import time
from pathlib import Path

from shoal.experiments.edge_bench import _instance
from shoal.experiments.edge_instances import jellyfish_synthetic_variants
from shoal.planner.edge import plan_edge
from shoal.runtime.edge.planner_process import PlannerProcess

OUT = Path("benchmarks/results/edge_planner_loop_lag.json")


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - started) * 1000 - 1.0)


async def measure(mode: str, instances, planner: PlannerProcess) -> dict:
    stop, lags = asyncio.Event(), []
    task = asyncio.create_task(ticker(stop, lags))
    started = time.perf_counter()
    for instance in instances:
        if mode == "thread":
            await asyncio.to_thread(plan_edge, instance, "shoal")
        elif mode == "process":
            await planner.plan(instance, "shoal")
        else:
            await asyncio.sleep(0.3)
    stop.set()
    await task
    lags.sort()
    row = {"mode": mode, "plans": len(instances), "seconds": round(time.perf_counter() - started, 2),
           "lag_p50_ms": round(statistics.median(lags), 3), "lag_p99_ms": round(lags[int(0.99 * len(lags))], 3), "lag_max_ms": round(lags[-1], 2)}
    print(row)
    return row


async def main() -> None:
    instances = [_instance(jellyfish_synthetic_variants(), 4, 32, 3, index) for index in range(8)]
    planner = PlannerProcess()
    await planner.plan(instances[0], "shoal")  # the process's start is not what is measured
    try:
        rows = [await measure(mode, instances, planner) for mode in ("idle", "thread", "process", "thread", "process")]
    finally:
        planner.stop()
    OUT.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
