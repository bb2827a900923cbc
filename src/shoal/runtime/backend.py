"""Where workers run: the `Backend` interface and its `local` implementation (`ray`: ray_backend).

The worker manager and the workflow executor talk to a backend only through this interface:
reserve a set of workers as a whole, start one worker (first or replacement) in its place, list
what the backend can host, give the reservation back. A worker is anything with the `Worker`
interface, so the scheduler and the batcher never know which backend they run on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from shoal.runtime.batch_block import DEFAULT_BLOCK_BYTES
from shoal.runtime.worker_channel import OutputsCallback

__all__ = ["BACKENDS", "Backend", "LocalBackend", "Worker", "WorkerSpec", "counted_load", "make_backend", "start_replacement"]

BACKENDS = ("local", "ray")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """One planned worker: its name, its device and the threads its sessions use."""

    worker_id: str
    device: str = "cpu"
    intra_op_threads: int = 1
    burst_threads: int = 0
    """Threads of a second, wider CPU session a batch may use while every other worker is idle
    (0: none; local workers only)."""


class Worker(Protocol):
    """One worker: a process or an actor holding ONNX Runtime sessions on one device."""

    worker_id: str
    device: str
    alive: bool
    loaded_variants: dict[str, float]
    busy_until_ms: float
    loading: int
    """Loads in flight. A worker runs batches while it loads (the load is on a thread of its own),
    but slower, and its batches would disturb the load's warm-up profile, so the batcher leaves
    a queue to the workers that are not loading, where there are any."""
    burst_threads: int
    """> 0: the worker holds a wider session for batches that run while every other worker is idle."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...

    async def load(self, variant_key: str, path: str, input_name: str, output_name: str, input_shape: Sequence[int], **options: Any) -> dict: ...

    async def unload(self, variant_key: str) -> None: ...

    async def run(self, variant_key: str, items: Sequence[np.ndarray], burst: bool = False,
                  on_outputs: OutputsCallback | None = None) -> tuple[np.ndarray, float]:  # fmt: skip
        """One batch: (outputs, compute ms). `on_outputs`, where the worker can, gets the same
        as soon as they arrive (from the reply's read callback, so what it wakes resumes in the
        same loop pass as the caller); a worker may never call it (a Ray actor reached through
        the object store), so callers still answer from the returned value."""
        ...

    async def stop(self) -> None: ...


async def counted_load(worker: Worker, variant_key: str, reply: Awaitable[dict]) -> dict:
    """Await a load's `reply` with the load counted in `worker.loading` meanwhile, then record
    the variant as loaded: the bookkeeping every kind of worker does around its own load."""
    worker.loading += 1
    try:
        answer = await reply
    finally:
        worker.loading -= 1
    worker.loaded_variants[variant_key] = answer["load_ms"]
    return answer


class Backend(Protocol):
    name: str

    async def reserve(self, specs: Sequence[WorkerSpec]) -> None:
        """Make room for all of `specs` or fail with a message naming what is missing."""

    def new_worker(self, spec: WorkerSpec, *, on_exit: Callable[[Any], None]) -> Worker:
        """A worker for `spec` (not started), in the place reserved for it."""

    def resources(self) -> dict[str, float]:
        """What this backend can host in all: CPUs, GPUs and named device types."""

    def release(self) -> None:
        """Give the reservation back (after the workers stopped). Safe to call twice."""


class LocalBackend:
    """Worker processes on this machine (the default)."""

    name = "local"

    def __init__(self, *, shared_memory_bytes: int = DEFAULT_BLOCK_BYTES):
        self.shared_memory_bytes = shared_memory_bytes

    async def reserve(self, specs: Sequence[WorkerSpec]) -> None:
        """Nothing to reserve: processes share the machine's cores (threads are not pinned)."""

    def new_worker(self, spec: WorkerSpec, *, on_exit: Callable[[Any], None]) -> Worker:
        from shoal.runtime.worker_handle import WorkerHandle

        return WorkerHandle(spec.worker_id, device=spec.device, intra_op_threads=spec.intra_op_threads, burst_threads=spec.burst_threads,
                            shared_memory_bytes=self.shared_memory_bytes, on_exit=on_exit)

    def resources(self) -> dict[str, float]:
        from shoal.profiler.session import available_devices, default_intra_op_threads

        resources = {"CPU": float(default_intra_op_threads())}
        if any(device.kind == "cuda" for device in available_devices()):
            resources["GPU"] = 1.0  # ONNX Runtime is asked for cuda:0 only
        return resources

    def release(self) -> None:
        pass


def make_backend(
    name: str, *, shared_memory_bytes: int = DEFAULT_BLOCK_BYTES, ray_address: str | None = None,
    ray_device_resource: str | None = None, ray_placement_strategy: str = "PACK",
) -> Backend:
    if name == "local":
        return LocalBackend(shared_memory_bytes=shared_memory_bytes)
    if name == "ray":
        from shoal.runtime.ray_backend import RayBackend

        return RayBackend(address=ray_address, device_resource=ray_device_resource, placement_strategy=ray_placement_strategy,
                          shared_memory_bytes=shared_memory_bytes)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


async def start_replacement(
    make_worker: Callable[[], Worker], on_failure: Callable[[Exception, float], None], *,
    first_retry_s: float = 1.0, max_retry_s: float = 30.0,
) -> Worker:
    """Start a dead worker's replacement, retrying with back-off until one starts.

    A replacement can fail to start when its place is gone (a Ray node died and no other node
    has room); the caller keeps serving on its other workers meanwhile. `on_failure(error,
    retry_in_s)` reports each failed try."""
    delay_s = first_retry_s
    while True:
        worker = make_worker()
        try:
            await worker.start()
            return worker
        except asyncio.CancelledError:  # the owner is stopping: leave no half-started worker behind
            await asyncio.shield(_stop_quietly(worker))
            raise
        except Exception as error:
            await _stop_quietly(worker)
            on_failure(error, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(2 * delay_s, max_retry_s)


async def _stop_quietly(worker: Worker) -> None:
    try:
        await worker.stop()
    except Exception:  # a worker that failed to start may not stop cleanly either; keep going
        logger.warning("a failed worker did not stop cleanly", exc_info=True)
