"""The reference every server in `shoal bench serve` is measured against: bare ONNX Runtime in
the bench's own process on batches from memory (the ceiling in img/s, and the batch-1 latency
that "overhead" is the difference to), and the cost of moving a batch to a worker process
through shared memory against pickling it over a pipe (the choice shoal's workers make).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from shoal.experiments.serve_bench import BenchTarget

__all__ = ["Batch1Reference", "measure_ceiling", "measure_tensor_transport"]


def measure_ceiling(target: BenchTarget, *, max_batch_size: int, threads: int, duration_s: float, seed: int = 0) -> dict[str, Any]:
    """Bare ORT in this process on tensors from memory: the best img/s (batch 1 or max), p50 at batch 1."""
    from shoal.core.models import Device
    from shoal.profiler.session import create_session

    session = create_session(target.model_path, Device.parse("cpu"), intra_op_threads=threads)
    rng = np.random.default_rng(seed)
    single = rng.random(target.input_shape, dtype=np.float32)
    full = rng.random((max_batch_size, *target.input_shape[1:]), dtype=np.float32)
    outputs = [target.output_name]
    for _ in range(5):
        session.run(outputs, {target.input_name: single})
        session.run(outputs, {target.input_name: full})
    samples_ms: list[float] = []
    begin = time.perf_counter()
    while time.perf_counter() - begin < duration_s / 2 or len(samples_ms) < 20:
        start = time.perf_counter()
        session.run(outputs, {target.input_name: single})
        samples_ms.append((time.perf_counter() - start) * 1000.0)
    single_per_s = len(samples_ms) / (time.perf_counter() - begin)
    batches, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < duration_s / 2 or batches < 3:
        session.run(outputs, {target.input_name: full})
        batches += 1
    elapsed_s = time.perf_counter() - begin
    batched_per_s = batches * max_batch_size / elapsed_s
    # The ceiling is the better of batch 1 and the max batch: for some models ORT is faster per
    # image unbatched (cache effects), and a ceiling must not be one a server can beat.
    images_per_s = max(batched_per_s, single_per_s)
    return {
        "goodput_rps": round(images_per_s, 1),
        "images_per_s": round(images_per_s, 1),
        "images_per_s_at_max_batch": round(batched_per_s, 1),
        "images_per_s_at_batch_1": round(single_per_s, 1),
        "batch_size": max_batch_size,
        "batch_ms": round(elapsed_s / batches * 1000.0, 4),
        "ms_per_image": round(1000.0 / images_per_s, 4),
        "batch1_p50_ms": round(statistics.median(samples_ms), 4),
        "batch1_samples": len(samples_ms),
        "threads": threads,
    }


class Batch1Reference:
    """Bare ORT batch-1 latency, re-measured right before each server's low-load point.

    Overhead is a difference of two small numbers taken on a shared machine; measuring the
    reference next to the measurement it is subtracted from keeps background drift out of it.
    """

    def __init__(self, target: BenchTarget, threads: int, seed: int = 0):
        from shoal.core.models import Device
        from shoal.profiler.session import create_session

        self.session = create_session(target.model_path, Device.parse("cpu"), intra_op_threads=threads)
        self.feed = {target.input_name: np.random.default_rng(seed).random(target.input_shape, dtype=np.float32)}
        self.outputs = [target.output_name]

    def p50_ms(self, duration_s: float) -> float:
        for _ in range(3):
            self.session.run(self.outputs, self.feed)
        samples_ms: list[float] = []
        begin = time.perf_counter()
        while time.perf_counter() - begin < duration_s or len(samples_ms) < 20:
            start = time.perf_counter()
            self.session.run(self.outputs, self.feed)
            samples_ms.append((time.perf_counter() - start) * 1000.0)
        return round(statistics.median(samples_ms), 4)


def _transport_echo_main(connection: Any, memory_name: str, size_bytes: int, num_classes: int) -> None:
    """Child: answer each batch the way a worker would, through the worker's shared block or a pickle."""
    import pickle

    from shoal.runtime.batch_block import BatchBlock

    block = BatchBlock.attach(memory_name, size_bytes)
    try:
        while True:
            try:
                payload = connection.recv_bytes()
            except EOFError:
                return
            if payload.startswith(b"{"):
                message = json.loads(payload)
                if message.get("op") == "stop":
                    return
                shape = tuple(message["shape"])
                inputs = block.inputs(shape[0], shape[1:])
                outputs = np.zeros((shape[0], num_classes), dtype=np.float32)
                if shape[-1] >= num_classes:
                    outputs[...] = inputs[:, 0, 0, :num_classes]
                del inputs
                connection.send_bytes(json.dumps({"op": "done", "output_shape": block.write_outputs(outputs)}).encode())
            else:
                inputs = pickle.loads(payload)
                outputs = np.zeros((inputs.shape[0], num_classes), dtype=np.float32)
                if inputs.shape[-1] >= num_classes:
                    outputs[...] = inputs[:, 0, 0, :num_classes]
                connection.send(outputs)
    finally:
        block.release()


def measure_tensor_transport(item_shapes: dict[str, tuple[int, ...]], *, batch_sizes: tuple[int, ...] = (1, 32),
                             num_classes: int = 10, repeats: int = 60) -> list[dict[str, Any]]:  # fmt: skip
    """Round trip per batch to a spawned process: shared memory + JSON control vs pickle over a Pipe.

    Both start from a list of per-request arrays (what the batcher holds) and end with the
    outputs in the parent; shared memory copies items into the block and outputs out of it,
    pickle stacks the items and serialises them (copying the bytes through the pipe).
    """
    from shoal.runtime.batch_block import BATCH_SLOTS, BatchBlock

    largest = max(int(np.prod(shape)) for shape in item_shapes.values()) * max(batch_sizes) * 4
    block = BatchBlock.create(BATCH_SLOTS * (2 * largest + 4096))
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=True)
    process = context.Process(target=_transport_echo_main, args=(child_end, block.name, block.size_bytes, num_classes), daemon=True)
    process.start()
    child_end.close()
    rows = []
    try:
        rng = np.random.default_rng(0)
        for name, item_shape in item_shapes.items():
            for batch_size in batch_sizes:
                items = [rng.random(item_shape, dtype=np.float32) for _ in range(batch_size)]

                def via_shared_memory() -> np.ndarray:
                    block.write_inputs(items)
                    parent_end.send_bytes(json.dumps({"op": "run", "shape": [batch_size, *item_shape]}).encode())
                    return block.read_outputs(json.loads(parent_end.recv_bytes())["output_shape"])

                def via_pickle() -> np.ndarray:
                    parent_end.send(np.stack(items))
                    return parent_end.recv()

                timings: dict[str, list[float]] = {"shared_memory": [], "pickle": []}
                for _ in range(3):  # warm both paths (page faults, buffers)
                    via_shared_memory()
                    via_pickle()
                for _ in range(repeats):  # interleaved, so noise from other jobs hits both alike
                    for method, action in (("shared_memory", via_shared_memory), ("pickle", via_pickle)):
                        begin = time.perf_counter()
                        action()
                        timings[method].append((time.perf_counter() - begin) * 1e6)
                shm_us, pickle_us = statistics.median(timings["shared_memory"]), statistics.median(timings["pickle"])
                rows.append({
                    "variant": name,
                    "item_shape": list(item_shape),
                    "batch_size": batch_size,
                    "batch_bytes": batch_size * int(np.prod(item_shape)) * 4,
                    "shared_memory_us_p50": round(shm_us, 1),
                    "pickle_us_p50": round(pickle_us, 1),
                    "pickle_over_shared_memory": round(pickle_us / shm_us, 3) if shm_us else None,
                    "repeats": repeats,
                })  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            parent_end.send_bytes(b'{"op": "stop"}')
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
        parent_end.close()
        block.release()
    return rows
