"""Measuring a variant: latency per batch size, load time, memory and accuracy.

Latency is measured the way a worker will run the model: one session per variant with a fixed
thread count, inputs already in memory, after warm-up runs so that allocator and kernel
selection costs are not billed to the first samples. Raw samples are kept beside the
percentiles so that later analysis is not limited to what was summarised here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime

from shoal.core.errors import InvalidInputError
from shoal.core.models import Device, Family, LatencyStats, Profile, Variant
from shoal.profiler.session import create_session, default_intra_op_threads
from shoal.zoo.preprocess import resize_images

__all__ = ["DEFAULT_BATCH_SIZES", "measure_accuracy", "profile_variant", "resident_memory_bytes", "summarise_latencies"]

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16)

ProgressCallback = Callable[[int], None]
"""Called with the number of finished steps since the last call (for progress bars)."""


def resident_memory_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, this one by default (Linux /proc; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import os

    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def summarise_latencies(batch_size: int, samples_ms: Sequence[float]) -> LatencyStats:
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("at least one latency sample is needed")
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return LatencyStats(
        batch_size=batch_size,
        p50_ms=round(float(p50), 4),
        p95_ms=round(float(p95), 4),
        p99_ms=round(float(p99), 4),
        mean_ms=round(float(values.mean()), 4),
        samples_ms=[round(float(value), 4) for value in values],
    )


def measure_accuracy(
    session: onnxruntime.InferenceSession,
    family: Family,
    variant: Variant,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
) -> float:
    """Top-1 accuracy of a variant on full-resolution validation images, preprocessed as served."""
    if len(images_uint8) == 0:
        raise InvalidInputError(f"family {family.name!r} has an empty validation set")
    scale = float(variant.preprocessing.get("scale", 1.0 / 255.0))
    correct = 0
    for start in range(0, len(images_uint8), batch_size):
        chunk = images_uint8[start : start + batch_size].astype(np.float32) * scale
        inputs = resize_images(chunk, variant.input_size_px)
        (logits,) = _run(session, family, variant, {family.input_name: inputs})
        correct += int((np.argmax(logits, axis=1) == labels[start : start + batch_size]).sum())
        if progress:
            progress(len(chunk))
    return correct / len(images_uint8)


MAX_PROFILE_BATCH_SIZE = 4096
"""Past it a batch of inputs alone can be gigabytes (4096 RGB images at 224 px: 2.5 GB)."""


def _run(session, family: Family, variant: Variant, feed: dict) -> list:
    """One run; a model that loads but fails when it runs (a fixed reshape, a dimension it does
    not take) is the model's error, named as such, not a traceback."""
    try:
        return session.run([family.output_name], feed)
    except Exception as error:  # ONNX Runtime's own exception types, not a stable API
        batch = next(iter(feed.values())).shape[0]
        raise InvalidInputError(f"variant {family.name}/{variant.name}: ONNX Runtime failed on a batch of {batch}: {error}") from None


def profile_variant(
    model_path: Path,
    family: Family,
    variant: Variant,
    device: Device,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 30,
    warmup: int = 3,
    intra_op_threads: int | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    progress: ProgressCallback | None = None,
) -> Profile:
    """Measure one variant on one device; `progress` advances once per timed run and per validation image."""
    if repeats < 1 or warmup < 0:
        raise InvalidInputError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not batch_sizes or any(not 1 <= size <= MAX_PROFILE_BATCH_SIZE for size in batch_sizes):
        raise InvalidInputError(f"batch sizes must be integers from 1 to {MAX_PROFILE_BATCH_SIZE}, got {list(batch_sizes)}")
    threads = intra_op_threads or default_intra_op_threads()
    rng = np.random.default_rng(0)
    shape = (family.input_channels, variant.input_size_px, variant.input_size_px)

    memory_before = resident_memory_bytes()
    started = time.perf_counter()
    session = create_session(model_path, device, intra_op_threads=threads)
    _run(session, family, variant, {family.input_name: rng.random((1, *shape), dtype=np.float32)})
    load_time_ms = (time.perf_counter() - started) * 1000.0
    memory_bytes = max(0, resident_memory_bytes() - memory_before)

    batches: dict[int, LatencyStats] = {}
    for batch_size in sorted(set(batch_sizes)):
        feed = {family.input_name: rng.random((batch_size, *shape), dtype=np.float32)}
        for _ in range(warmup):
            _run(session, family, variant, feed)
        samples_ms = []
        for _ in range(repeats):
            begin = time.perf_counter()
            session.run([family.output_name], feed)
            samples_ms.append((time.perf_counter() - begin) * 1000.0)
            if progress:
                progress(1)
        batches[batch_size] = summarise_latencies(batch_size, samples_ms)

    accuracy = None
    count = 0
    if validation is not None:
        images, labels = validation
        accuracy = round(measure_accuracy(session, family, variant, images, labels, progress=progress), 6)
        count = len(labels)
    return Profile(
        family=family.name,
        variant=variant.name,
        device=device.name,
        batches=batches,
        load_time_ms=round(load_time_ms, 3),
        memory_bytes=memory_bytes,
        accuracy=accuracy,
        num_validation_images=count,
        onnxruntime_version=onnxruntime.__version__,
        intra_op_threads=threads,
    )
