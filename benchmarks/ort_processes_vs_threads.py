"""Bare ONNX Runtime throughput of one model as shoal's workers run it (single-threaded
sessions in separate processes) against the ceiling's way (one process, several intra-op
threads), at several batch sizes: how many images per second a core of ONNX Runtime is worth,
which is what the serving ceiling ratio is made of once the frontend and the load generator
take their share of the cores.

    .venv/bin/python benchmarks/ort_processes_vs_threads.py --model-path ~/.cache/shoal/repo/demo/xlarge-128/model.onnx \\
        --out benchmarks/results/serve-cpu-breakdown/ort-processes-vs-threads.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np


def _images_per_s(model_path: str, batch_size: int, threads: int, duration_s: float, results) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    shape = [batch_size, *[dim if isinstance(dim, int) else 1 for dim in model_input.shape[1:]]]
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(5):
        session.run(None, {model_input.name: batch})
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration_s:
        session.run(None, {model_input.name: batch})
        runs += 1
    results.put(runs * batch_size / (time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, default=Path.home() / ".cache/shoal/repo/demo/xlarge-128/model.onnx")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    rows = []
    for processes, threads in ((1, 2), (2, 1), (1, 1)):
        for batch_size in (int(size) for size in args.batch_sizes.split(",")):
            results = context.Queue()
            workers = [context.Process(target=_images_per_s, args=(str(args.model_path), batch_size, threads, args.duration_s, results))
                       for _ in range(processes)]  # fmt: skip
            for worker in workers:
                worker.start()
            total = sum(results.get() for _ in workers)
            for worker in workers:
                worker.join()
            row = {"processes": processes, "threads_each": threads, "batch_size": batch_size, "images_per_s": round(total, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model_path": str(args.model_path), "duration_s": args.duration_s, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
