"""`shoal` against `jellyfish` on the edge quality grid (the 600 synthetic instances of `shoal
bench planner edge`, seed 0), without re-solving `exact` (about 50 minutes of both cores). The
stored full run keeps only per-instance ratios to `exact`; given `--baseline`, this script's rows
for the code that produced that run, exact = baseline shoal objective / stored ratio, checked
against the stored jellyfish ratios.

    .venv/bin/python benchmarks/edge_dominance.py --out rows.json            # this code's plans
    .venv/bin/python benchmarks/edge_dominance.py --out new.json --baseline old.json

`old.json` must be this script's output for the code that wrote benchmarks/results/edge.json;
with it the script also prints the ratio to `exact` per cell. Uses both cores.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from shoal.experiments.edge_bench import _instance
from shoal.experiments.edge_instances import jellyfish_synthetic_variants
from shoal.planner.edge import plan_edge

CELLS = [(workers, workers * per_worker) for workers in (2, 4) for per_worker in (4, 6, 8)]


def _task(args: tuple[int, int, int]) -> tuple[int, int, int, float, float, float]:
    workers, clients, index = args
    instance = _instance(jellyfish_synthetic_variants(), workers, clients, 0, index)
    started = time.perf_counter()
    shoal = plan_edge(instance, "shoal", seed=index).objective
    elapsed_ms = (time.perf_counter() - started) * 1000
    return workers, clients, index, shoal, plan_edge(instance, "jellyfish", seed=index).objective, elapsed_ms


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--stored", type=Path, default=Path("benchmarks/results/edge.json"))
    args = parser.parse_args()
    tasks = [(w, c, i) for w, c in CELLS for i in range(100)]
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(_task, tasks, chunksize=4))
    args.out.write_text(json.dumps(rows))
    below = [row for row in rows if row[3] < row[4] - 1e-9]
    print(f"shoal below jellyfish on {len(below)} of {len(rows)}: {[row[:3] for row in below]}")
    print(f"shoal mean plan time {np.mean([row[5] for row in rows]):.1f} ms")
    if args.baseline:
        stored = json.loads(args.stored.read_text())["quality"]["ratios"]
        baseline = json.loads(args.baseline.read_text())
        exact = [old[3] / ratio for old, ratio in zip(baseline, stored["shoal"])]
        jellyfish_error = max(abs(old[4] / e - r) for old, e, r in zip(baseline, exact, stored["jellyfish"]))
        assert jellyfish_error < 1e-9, "the baseline rows do not belong to the stored run"
        ratio = np.array([row[3] / e for row, e in zip(rows, exact)])
        print(f"shoal ratio to exact: mean {ratio.mean():.5f}, min {ratio.min():.4f}")
        for cell in CELLS:
            mask = np.array([(row[0], row[1]) == cell for row in rows])
            print(f"  {cell[0]} workers x {cell[1]} clients: mean {ratio[mask].mean():.5f}, min {ratio[mask].min():.4f}")
