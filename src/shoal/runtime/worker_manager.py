"""Worker processes and what each has loaded: start, load with warm-up, LRU cache, restart.

Every worker holds an LRU cache of loaded variants bounded by a memory budget (the estimate is
three times the model file: weights plus ONNX Runtime's arena). A variant is reported ready
only after its warm-up runs finished. A worker that dies is replaced by a new process that
reloads the same variants; the requests it held were already failed by its handle.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from shoal.profiler.session import default_intra_op_threads
from shoal.runtime.metrics import ServingMetrics
from shoal.runtime.scheduler import Scheduler
from shoal.runtime.backend import Worker, WorkerSpec, make_backend, start_replacement
from shoal.runtime.batch_block import DEFAULT_BLOCK_BYTES
from shoal.runtime.errors import ModelLoadError, WorkerFailedError

if TYPE_CHECKING:
    from shoal.runtime.service import ServedVariant

__all__ = ["ServeConfig", "WorkerManager"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Everything `shoal serve` can be told; validated where it is built (the CLI)."""

    repository: Path
    device: str = "cpu"
    num_workers: int = 1
    intra_op_threads: int = 0  # 0: the machine's cores divided among the workers
    burst_threads: int = 0  # > threads per worker: a wider session for batches that run while the other workers idle
    max_batch_size: int = 32
    queue_capacity: int = 1024
    default_slo_ms: float = 1000.0
    max_queue_delay_ms: float = 0.0
    batches_ahead: int = 1  # batches a worker is sent beyond the one it runs (0 or 1; Scheduler)
    admission_headroom: float = 0.8  # admit only if the predicted finish is within this share of the SLO
    max_loop_lag_share: float = 0.06  # event-loop lag, as a share of the model's recent SLO, at which every inference request is refused on arrival (InferenceService.refuse_at_gate; 0: never)
    policy: str = "shoal"
    preload: tuple[str, ...] | None = None  # None: every variant of every family
    max_request_items: int = 256
    cache_bytes_per_worker: int = 2 * 1024**3
    shared_memory_bytes: int = DEFAULT_BLOCK_BYTES
    profile_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    prices_usd_per_hour: tuple[tuple[str, float], ...] = (("cpu", 0.048), ("cuda", 3.06))
    """Price of one worker per device kind, for model-less cost limits and autoscaling."""
    autoscale: bool = False  # replicas per variant from shoal.planner.autoscale (else the cache planner)
    backend: str = "local"  # "local": worker processes here; "ray": Ray actors (shoal.runtime.ray_backend)
    ray_address: str | None = None  # None: start a local Ray instance; "auto" or "ray://host:port" to join one
    ray_device_resource: str | None = None  # custom Ray resource each worker actor requires (its device type)
    ray_placement_strategy: str = "PACK"  # how the workers' placement group spreads over nodes (PACK, SPREAD, STRICT_*)
    autoscale_slack: float = 1.05
    autoscale_hold_s: float = 30.0

    def price_usd_per_hour(self, device_kind: str) -> float:
        return dict(self.prices_usd_per_hour).get(device_kind, 0.0)

    @property
    def threads_per_worker(self) -> int:
        return self.intra_op_threads or max(1, default_intra_op_threads() // self.num_workers)


class WorkerManager:
    def __init__(
        self,
        config: ServeConfig,
        scheduler: Scheduler,
        metrics: ServingMetrics,
        on_loaded: Callable[[str, dict], None],
    ):
        self.config = config
        self.scheduler = scheduler
        self.metrics = metrics
        self.on_loaded = on_loaded
        self.workers: dict[str, Worker] = {}
        self._cache: dict[str, OrderedDict[str, int]] = {}  # worker -> variant key -> estimated bytes (LRU order)
        self._variants: dict[str, "ServedVariant"] = {}
        self._restarts: set[asyncio.Task] = set()
        self._background_loads: set[asyncio.Task] = set()  # the rest of an `ensure_loaded(first_only=True)`
        self._targets: dict[str, int] = {}  # per variant key: how many unloads and replica counts were asked (`_new_target`)
        self._stopping = False
        self.serving = False
        """Set once the server takes requests: from then on loads roll (`_load_rolling`)."""
        self._rolling_load = asyncio.Lock()  # one worker loading at a time, across callers
        self._worker_ids = [f"w{index}" for index in range(config.num_workers)]
        self.backend = make_backend(
            config.backend, shared_memory_bytes=config.shared_memory_bytes, ray_address=config.ray_address,
            ray_device_resource=config.ray_device_resource, ray_placement_strategy=config.ray_placement_strategy,
        )

    def _spec(self, worker_id: str) -> WorkerSpec:
        return WorkerSpec(worker_id, self.config.device, self.config.threads_per_worker, self.config.burst_threads)

    def _new_handle(self, worker_id: str) -> Worker:
        return self.backend.new_worker(self._spec(worker_id), on_exit=self._on_worker_exit)

    async def start(self) -> None:
        await self.backend.reserve([self._spec(worker_id) for worker_id in self._worker_ids])
        logger.info("backend %s can host %s", self.backend.name, self.backend.resources())
        handles = [self._new_handle(worker_id) for worker_id in self._worker_ids]
        try:
            await asyncio.gather(*(handle.start() for handle in handles))
        except BaseException:  # stop what started and give the reservation back
            self._stopping = True
            await asyncio.gather(*(handle.stop() for handle in handles), return_exceptions=True)
            self.backend.release()
            raise
        for handle in handles:
            self.workers[handle.worker_id] = handle
            self._cache[handle.worker_id] = OrderedDict()
            self.scheduler.attach_worker(handle)
        for handle in handles:
            if not handle.alive:  # died after its start, while the others started: not ours then
                self._on_worker_exit(handle)

    async def stop(self) -> None:
        self._stopping = True
        restarts = list(self._restarts)
        for task in (*restarts, *self._background_loads):
            task.cancel()
        await asyncio.gather(*restarts, *self._background_loads, return_exceptions=True)  # a replacement being started is stopped first
        await asyncio.gather(*(worker.stop() for worker in self.workers.values()), return_exceptions=True)
        self.backend.release()

    # -- loading --------------------------------------------------------------------------------
    async def ensure_loaded(self, served: "ServedVariant", *, first_only: bool = False) -> None:
        """Load (and warm) a variant on every worker that does not hold it yet (`_load_rolling`).

        `first_only`: once serving, return as soon as one worker holds it, the others loading it
        in the background (one at a time, as ever). For a caller that needs the variant served,
        not everywhere: an edge plan switching sessions to it would otherwise wait for every
        worker's load in turn (~0.3 s each for a demo variant) before telling them."""
        self._variants[served.key] = served
        # An unload or a replica count asked while this runs wins: what is loaded after it undone.
        target = self._targets.get(served.key, 0)
        workers = [worker for worker in self.workers.values() if worker.alive]
        if not first_only or not self.serving or len(workers) < 2:
            await self._load_rolling(workers, served, target=target)
            return

        def held() -> bool:
            return any(served.key in worker.loaded_variants for worker in workers if worker.alive)

        failed: WorkerFailedError | None = None
        # Workers not busy loading something else first; the next one if a worker dies meanwhile.
        for worker in sorted(workers, key=lambda worker: worker.loading > 0):
            if held():
                break
            try:
                await self._load_rolling([worker], served, target=target)
            except WorkerFailedError as error:
                failed = error
        if failed is not None and not held():
            raise failed
        if self._targets.get(served.key, 0) != target:
            return  # unloaded or given a replica count meanwhile: nothing to load behind
        # The rest, for as long as nothing since set a target for the variant (an unload, a replica count).
        behind = self._load_rolling(workers, served, target=target)
        task = asyncio.create_task(behind, name=f"load-behind-{served.key}")
        self._background_loads.add(task)
        task.add_done_callback(self._background_load_done)

    def _background_load_done(self, task: asyncio.Task) -> None:
        self._background_loads.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("loading a variant on the remaining workers failed: %s", task.exception())

    def _new_target(self, key: str) -> None:
        """An unload or a replica count was asked for `key`: loads behind (`_load_rolling`'s
        `target`) stop."""
        self._targets[key] = self._targets.get(key, 0) + 1

    async def _load_rolling(self, workers: list[Worker], served: "ServedVariant", *, target: int | None = None) -> None:
        """`_load_on` each of `workers`: all at once before the server takes requests (its
        start-up preloads), else one worker at a time across all callers, so that the others
        keep serving. A worker that fails meanwhile does not keep the variant from the others;
        its error is raised once they are done (as `gather` did). With `target` (the variant's
        count in `_targets` when the caller asked), it stops once a new target was set and
        undoes a load that the new target overtook.

        Why: the controller loads a family's next variant while requests arrive, and a loading
        worker leaves its queues to the others (`Scheduler._left_to_others`). Loaded on both
        workers at once (the demo family right after start, when a worker still ran no batch
        while it loaded), no request was served for ~300 ms."""
        if not self.serving:
            await asyncio.gather(*(self._load_on(worker, served) for worker in workers))
            return
        def overtaken() -> bool:
            return target is not None and self._targets.get(served.key, 0) != target

        failed: WorkerFailedError | None = None
        for worker in sorted(workers, key=lambda worker: served.key not in worker.loaded_variants):
            if overtaken():
                break
            if not worker.alive:
                continue
            if served.key in worker.loaded_variants:
                await self._load_on(worker, served)  # held already: only its place in the cache moves
                continue
            try:
                async with self._rolling_load:
                    if overtaken():  # while it waited its turn
                        break
                    await self._load_on(worker, served)
                    # Undone before the next load's turn: one that the new target asks for (a
                    # replica count) then loads it again rather than find it here and keep it,
                    # only for this undo to take it away after.
                    if overtaken() and worker.alive and served.key in worker.loaded_variants:
                        await self._unload_from(worker, served.key)
            except WorkerFailedError as error:
                logger.warning("loading %s on worker %s failed: %s", served.key, worker.worker_id, error)
                failed = failed or error
                continue
        if failed is not None:
            raise failed

    async def _load_on(self, worker: Worker, served: "ServedVariant") -> None:
        cache = self._cache[worker.worker_id]
        if served.key in worker.loaded_variants:
            cache.move_to_end(served.key)
            return
        try:
            size = 3 * os.path.getsize(served.model_path)
        except OSError as error:
            raise ModelLoadError(
                f"variant {served.key!r} cannot be loaded: its model file {served.model_path} cannot be read ({error.strerror}); "
                "if it was removed from the repository, register it again or restart the server"
            ) from None
        while cache and sum(cache.values()) + size > self.config.cache_bytes_per_worker:
            victim, _ = next(iter(cache.items()))
            logger.info("evicting %s from worker %s (cache full)", victim, worker.worker_id)
            await self._unload_from(worker, victim)
        family = served.family
        reply = await worker.load(
            served.key,
            served.model_path,
            family.input_name,
            family.output_name,
            (family.input_channels, served.variant.input_size_px, served.variant.input_size_px),
            profile_batch_sizes=[b for b in self.config.profile_batch_sizes if b <= self.config.max_batch_size],
        )
        cache[served.key] = size
        self.on_loaded(served.key, reply)
        self._show_loaded(served.key)

    async def set_replicas(self, served: "ServedVariant", replicas: int) -> int:
        """Hold the variant on exactly `replicas` live workers (capped by the number of workers).

        Workers that already hold it keep it first, so scaling never reloads needlessly.
        Returns the replica count reached.
        """
        self._new_target(served.key)
        self._variants[served.key] = served
        alive = [worker for worker in self.workers.values() if worker.alive]
        holders = sorted(alive, key=lambda worker: served.key not in worker.loaded_variants)
        target = max(0, min(replicas, len(alive)))
        await self._load_rolling(holders[:target], served)
        for worker in holders[target:]:
            await self._unload_from(worker, served.key)
        return target

    async def unload(self, key: str) -> None:
        self._new_target(key)
        self._variants.pop(key, None)
        for worker in list(self.workers.values()):
            await self._unload_from(worker, key)

    async def _unload_from(self, worker: Worker, key: str) -> None:
        """Unload `key` from `worker` (if it holds it) and out of its cache; requests still queued
        for it are answered if that was the last worker holding it (`Scheduler.fail_unserved`)."""
        if key in worker.loaded_variants and worker.alive:
            await worker.unload(key)
        self._cache[worker.worker_id].pop(key, None)
        self._show_loaded(key)
        self.scheduler.fail_unserved(key)

    def _show_loaded(self, key: str) -> None:
        """Set the variant's loaded gauge from what the scheduler's live workers hold, after every
        load, unload (an operator's, the controller's, an eviction, an overtaken load's undo),
        worker exit and restart, so that no caller has to remember to. (A replacement worker
        reloading its variants serves nothing until the scheduler has it.)"""
        self.metrics.loaded.labels(key).set(1 if self.scheduler.workers_for(key) else 0)

    def mark_used(self, key: str) -> None:
        for cache in self._cache.values():
            if key in cache:
                cache.move_to_end(key)

    # -- crash recovery -------------------------------------------------------------------------
    def _on_worker_exit(self, handle: Worker) -> None:
        """Restart a worker that died. A replacement that dies while it starts is not the
        worker's handle yet: its start fails, and the restart under way tries again (a second
        restart would leave a worker behind, unstopped)."""
        if self._stopping or self.workers.get(handle.worker_id) is not handle:
            return
        for key in self._cache.get(handle.worker_id, {}):
            self._show_loaded(key)
        task = asyncio.get_running_loop().create_task(self._restart(handle.worker_id))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    @property
    def live_workers(self) -> int:
        """Workers serving now: the capacity the autoscaler may plan with."""
        return sum(worker.alive for worker in self.workers.values())

    async def _restart(self, worker_id: str) -> None:
        """Replace a dead worker; while no replacement can start (a Ray node gone and no room
        elsewhere) keep serving on the others and try again with back-off."""
        keys = list(self._cache.get(worker_id, {}))
        self.metrics.worker_restarts.inc()

        def failed(error: Exception, retry_in_s: float) -> None:
            logger.error("worker %s could not be replaced (%s); serving on %d worker(s), next try in %.0f s",
                         worker_id, error, self.live_workers, retry_in_s)
            self.metrics.worker_replacements_failed.inc()

        handle = await start_replacement(lambda: self._new_handle(worker_id), failed)
        self.workers[worker_id] = handle
        self._cache[worker_id] = OrderedDict()
        for key in keys:
            if key in self._variants:
                try:
                    await self._load_on(handle, self._variants[key])
                except Exception:  # serve what did load; the controller loads the rest where it is wanted
                    logger.exception("worker %s: could not reload %s after its restart", worker_id, key)
                if key not in self._variants:
                    # Unloaded while it was reloaded here: the unload found the replacement not
                    # holding it yet, and the reload brought it back against the operator's word.
                    await self._unload_from(handle, key)
        self.scheduler.attach_worker(handle)
        for key in keys:
            self._show_loaded(key)
        logger.warning("worker %s restarted (pid %s) with %d variants", worker_id, handle.pid, len(keys))
