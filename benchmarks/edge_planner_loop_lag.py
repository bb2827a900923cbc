"""Event-loop lag while the edge planner runs on a thread vs in a planner process.

The live edge controller re-plans every 0.5 s; `shoal` takes up to ~0.4 s at 4-8 workers. On a
thread it holds the GIL in 5 ms slices and the server's event loop waits. This plans eight
4 workers x 32 clients grid instances back to back each way (twice, interleaved) while an
asyncio task measures how late `asyncio.sleep(0.001)` wakes up.

    .venv/bin/python benchmarks/edge_planner_loop_lag.py
"""

import asyncio
import concurrent.futures
import multiprocessing
import statistics
import time

from shoal.experiments.edge_bench import _instance
from shoal.experiments.edge_instances import jellyfish_synthetic_variants
from shoal.planner.edge import plan_edge

async def ticker(stop, lags):
    while not stop.is_set():
        t = time.perf_counter(); await asyncio.sleep(0.001); lags.append((time.perf_counter() - t) * 1000 - 1.0)

async def measure(mode, instances, pool):
    loop = asyncio.get_running_loop(); stop = asyncio.Event(); lags = []
    task = asyncio.create_task(ticker(stop, lags))
    t0 = time.perf_counter()
    for inst in instances:
        if mode == "thread": await asyncio.to_thread(plan_edge, inst, "shoal")
        elif mode == "process": await loop.run_in_executor(pool, plan_edge, inst, "shoal")
        else: await asyncio.sleep(0.3)
    stop.set(); await task
    lags.sort()
    return f"{mode}: {len(instances)} plans in {time.perf_counter()-t0:.1f} s; loop lag p50 {statistics.median(lags):.2f} ms p99 {lags[int(0.99*len(lags))]:.2f} ms max {lags[-1]:.1f} ms"

async def main():
    V = jellyfish_synthetic_variants()
    instances = [_instance(V, 4, 32, 3, i) for i in range(8)]
    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    await asyncio.get_running_loop().run_in_executor(pool, plan_edge, instances[0], "shoal")  # warm
    for mode in ("idle", "thread", "process", "thread", "process"):
        print(await measure(mode, instances, pool))
    pool.shutdown()
if __name__ == "__main__":
    asyncio.run(main())
