"""The Ray backend: each worker is a Ray actor holding ONNX Runtime sessions (`--backend ray`).

`RayWorkerHandle` has the interface of the local `WorkerHandle` (start, load, unload, run, stop,
`alive`, `loaded_variants`, `busy_until_ms`, `on_exit`), so the worker manager, the scheduler
and the batcher run unchanged on either backend. The actor runs the same `ModelHost` as a local
worker process. It asks Ray for `intra_op_threads` CPUs, one GPU when its device is CUDA, and
optionally a custom resource naming the device type its profiles were taken on, which is how a
plan's "replicas on accelerator type X" becomes a placement on the nodes that have X.

Placement: a set of workers that only makes sense together (the `--workers N` of a server, the
workers of a workflow plan) is reserved as one Ray placement group, one bundle per worker, so
that it starts in full or not at all (`reserve_placement_group`; strategy PACK by default, SPREAD to put
workers on different nodes). Each actor runs in its own bundle, and a replacement for a dead
actor goes back into the same bundle.

The hot path on one node: an actor on the server's own node serves its batches exactly as a
local worker process does, through a `WorkerChannel` (a Unix socket carrying the small JSON
control messages, a shared-memory `BatchBlock` carrying the tensors); Ray places it, starts it
and reports its node, and is out of the per-batch path. vLLM's Ray executor does the same with
its shared-memory message queue. Measured on this machine with a 3 MB batch: a Ray actor call
passing the batch through the object store costs 8.4 ms more CPU than the local pipe (the
raylet creates, seals and frees an object for every batch; the call itself is 2-3 ms of CPU on
both ends), and even an actor call carrying only the batch size costs 3 ms. An actor on another
node, or one whose socket or block cannot be reached, gets its batches by actor call and its
tensors through the object store (numpy arrays are zero-copy there).

An actor that dies fails the batch it holds with WorkerFailedError at once (answered, never
lost: the socket closes, or the actor call fails) and is replaced by the worker manager, like a
crashed local process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.core.errors import DeviceUnavailableError, InvalidInputError
from shoal.runtime.backend import WorkerSpec, counted_load
from shoal.runtime.batch_block import DEFAULT_BLOCK_BYTES, BatchBlock
from shoal.runtime.errors import ModelLoadError, WorkerFailedError
from shoal.runtime.worker_channel import OutputsCallback, WorkerChannel, load_message

__all__ = [
    "PLACEMENT_STRATEGIES", "Placement", "RayBackend", "RayWorkerHandle", "check_placement_strategy", "ensure_ray", "placements",
    "release_placement_group", "reserve_placement_group", "worker_resources",
]

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, *, local_cpus: int | None = None) -> None:
    """Connect to a cluster (`auto`, `host:port`, `ray://host:port`) or start a local one, once
    per process; a cluster that cannot be reached is a `DeviceUnavailableError` naming it.

    A local instance is given at least `local_cpus` logical CPUs (Ray counts them, it does not
    pin), so `--workers N` actors of one CPU each always fit on this machine. It is always a new
    one (Ray's "local"): Ray's own default joins the cluster in $RAY_ADDRESS or the one a `ray
    start` left on this machine, which refuses a CPU count and failed the start.
    """
    import os
    import signal
    import threading

    import ray

    if ray.is_initialized():
        return
    if address is not None:
        _check_reachable(address)
    cpus = max(os.cpu_count() or 1, local_cpus or 0) if address is None else None
    # Ray installs its own SIGTERM handler, which exits at once: shoal's (stop the workers,
    # answer what is in flight, exit 143) is put back.
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm_handler = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(address=address or "local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, TimeoutError) as error:
        raise DeviceUnavailableError(f"--address {address}: cannot reach the Ray cluster ({error})") from None
    finally:
        if main_thread and sigterm_handler is not None:
            signal.signal(signal.SIGTERM, sigterm_handler)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) that nothing answers fails now: Ray retries a GCS
    that is not there for minutes, deaf to SIGTERM while it does."""
    import socket

    if address in ("auto", "local"):  # Ray's own words: the cluster recorded here, a new instance
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 host is written [::1]:port
    if not host or not port.isdigit():
        raise InvalidInputError(f"--address {address!r}: give auto, local, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise DeviceUnavailableError(f"--address {address}: cannot reach the Ray cluster ({error.strerror or error})") from None


def worker_resources(device: str, intra_op_threads: int, device_resource: str | None = None) -> dict[str, float]:
    """What one worker asks Ray for: its threads as CPUs, a GPU on CUDA, its device type if named."""
    resources: dict[str, float] = {"CPU": float(intra_op_threads)}
    if device.startswith("cuda"):
        resources["GPU"] = 1.0
    if device_resource:
        resources[device_resource] = 1.0
    return resources


def check_placement_strategy(strategy: str) -> None:
    if strategy not in PLACEMENT_STRATEGIES:
        raise ValueError(f"placement strategy {strategy!r} is unknown: use one of {', '.join(PLACEMENT_STRATEGIES)}")


@dataclass(frozen=True)
class Placement:
    """A worker's place: bundle `bundle_index` of a reserved placement group."""

    group: Any
    bundle_index: int


async def reserve_placement_group(bundles: Sequence[dict[str, float]], *, strategy: str = "PACK", timeout_s: float = 120.0) -> Any:
    """Reserve one bundle per worker, all or nothing; a clear error naming what is missing when the
    cluster cannot host them within `timeout_s`. On any failure (a cancelled start included) the
    reservation is withdrawn."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    check_placement_strategy(strategy)
    group = placement_group([dict(bundle) for bundle in bundles], strategy=strategy)
    try:
        await asyncio.wait_for(group.ready(), timeout_s)
    except TimeoutError:
        remove_placement_group(group)
        raise DeviceUnavailableError(
            f"the Ray cluster cannot place {len(bundles)} workers {list(bundles)} with strategy {strategy} within "
            f"{timeout_s:.0f} s (available: {ray.available_resources()}); add nodes or resources, or lower --workers"
        ) from None
    except BaseException:
        remove_placement_group(group)
        raise
    return group


def release_placement_group(group: Any) -> None:
    """Give a placement group's resources back (stop its actors first)."""
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(group)
    except Exception:  # already removed, or Ray is shutting down
        logger.debug("placement group already gone", exc_info=True)


def placements(group: Any, count: int) -> list[Placement]:
    """Bundle i of `group` for the i-th of `count` workers."""
    return [Placement(group, index) for index in range(count)]


def _actor_class():
    import ray

    # Loads run in order on a thread of their own ("loading"), beside the default group's one
    # thread that runs the batches and unloads in order, as in a local worker (shoal.runtime.worker).
    @ray.remote(max_restarts=0, concurrency_groups={"loading": 1})
    class RayWorker:
        def __init__(self, device: str, intra_op_threads: int):
            from shoal.runtime.worker import ModelHost

            self.host = ModelHost(device, intra_op_threads)

        def ready(self) -> dict:
            import os

            return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

        def serve_channel(self, block_name: str, size_bytes: int, authkey: bytes) -> str:
            """Serve the worker protocol on a Unix socket (for a server on this node); returns its
            address. The serving thread runs beside Ray's own, which keep answering `ready`."""
            import os
            import tempfile
            import threading
            from multiprocessing.connection import Listener

            from shoal.runtime.worker import serve_connection

            block = BatchBlock.attach(block_name, size_bytes, tracked=False)
            # A directory of our own (0700), emptied once the server connected: a killed actor
            # runs no exit handlers, so nothing may be left for them to clean.
            directory = tempfile.mkdtemp(prefix="shoal-channel-")
            listener = Listener(os.path.join(directory, "socket"), family="AF_UNIX", authkey=authkey)

            def serve() -> None:
                try:
                    with listener:  # closing unlinks the socket file
                        connection = listener.accept()
                    os.rmdir(directory)
                    serve_connection(self.host, block, connection)
                finally:
                    block.release()

            threading.Thread(target=serve, name="shoal-channel", daemon=True).start()
            return listener.address

        @ray.method(concurrency_group="loading")
        def load(self, message: dict) -> dict:
            return self.host.load(message)

        def unload(self, variant: str) -> None:
            self.host.unload(variant)

        def run(self, variant: str, inputs: np.ndarray):
            return self.host.run(variant, inputs)

    return RayWorker


class RayWorkerHandle:
    def __init__(
        self,
        worker_id: str,
        *,
        device: str = "cpu",
        intra_op_threads: int = 1,
        address: str | None = None,
        device_resource: str | None = None,
        placement: Placement | None = None,
        shared_memory_bytes: int = DEFAULT_BLOCK_BYTES,
        on_exit: Callable[["RayWorkerHandle"], None] | None = None,
    ):
        self.worker_id = worker_id
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.address = address
        self.device_resource = device_resource
        self.placement = placement
        self.shared_memory_bytes = shared_memory_bytes  # 0: always use actor calls and the object store
        self.on_exit = on_exit
        self.loaded_variants: dict[str, float] = {}
        self.busy_until_ms = 0.0
        self.loading = 0  # loads in flight (batches run beside them, slower: Scheduler._left_to_others)
        self.burst_threads = 0  # an actor holds one session per variant (see `run`)
        self.alive = False
        self.pid: int | None = None
        self.channel: WorkerChannel | None = None  # the hot path of an actor on this node
        self._actor = None
        self._run_lock = asyncio.Lock()
        self._stopping = False
        self._ray = None

    async def start(self, timeout_s: float = 120.0) -> None:
        import ray

        self._ray = ray
        if not ray.is_initialized():  # the worker manager connects first; this is for direct use
            ensure_ray(self.address)
        wanted = worker_resources(self.device, self.intra_op_threads, self.device_resource)
        options: dict = {"num_cpus": wanted.pop("CPU"), "num_gpus": wanted.pop("GPU", None), "resources": wanted or None}
        if self.placement is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.placement.group, placement_group_bundle_index=self.placement.bundle_index
            )
        self._actor = _actor_class().options(**{k: v for k, v in options.items() if v is not None}).remote(self.device, self.intra_op_threads)
        try:
            try:
                identity = await asyncio.wait_for(self._actor.ready.remote(), timeout_s)
            except TimeoutError:
                raise WorkerFailedError(
                    f"worker {self.worker_id}: no Ray node offered {worker_resources(self.device, self.intra_op_threads, self.device_resource)} "
                    f"within {timeout_s:.0f} s; "
                    "add nodes or resources (`ray status` shows what the cluster has)"
                ) from None
            except ray.exceptions.RayActorError as error:  # died while starting, e.g. its constructor failed
                raise WorkerFailedError(f"worker {self.worker_id}: its Ray actor died while starting: {error}") from None
            self.pid = identity["pid"]
            if self.shared_memory_bytes and identity["node_id"] == self._driver_node_id():
                self.channel = await self._open_channel()
        except BaseException:
            # A start that failed or was cancelled (a stopping server) kills its actor: alive, it
            # would keep its placement-group slot, which a replacement must take.
            self._kill_actor()
            raise
        self.alive = True

    def _kill_actor(self) -> None:
        try:
            self._ray.kill(self._actor)
        except Exception:  # already gone, or Ray is shutting down
            logger.debug("ray actor of worker %s already gone", self.worker_id, exc_info=True)

    def _driver_node_id(self) -> str | None:
        """This process's Ray node; None through a Ray Client (`ray://`), whose driver is remote."""
        from ray.util.client import ray as client_ray

        if client_ray.is_connected():
            return None
        return self._ray.get_runtime_context().get_node_id()

    async def _open_channel(self, timeout_s: float = 30.0) -> WorkerChannel | None:
        """Connect to the actor's socket and block; None (actor calls from then on) when this node
        does not let us, say a container with its own /dev/shm or /tmp. (The actor then keeps a
        thread waiting on its unused socket until it is killed; the socket's directory stays.)"""
        import secrets
        from multiprocessing import AuthenticationError
        from multiprocessing.connection import Client

        block = BatchBlock.create(self.shared_memory_bytes)
        authkey = secrets.token_bytes(32)  # only this server may drive the actor, whatever the socket's permissions
        try:
            address = await self._actor.serve_channel.remote(block.name, self.shared_memory_bytes, authkey)
            connection = await asyncio.wait_for(asyncio.to_thread(Client, address, family="AF_UNIX", authkey=authkey), timeout_s)
        except (self._ray.exceptions.RayError, OSError, AuthenticationError, TimeoutError) as error:
            logger.warning("worker %s: no shared channel to its actor (%s); batches go by actor call", self.worker_id, error)
            block.release()
            return None
        except BaseException:
            block.release()
            raise
        return WorkerChannel(self.worker_id, connection, block, on_closed=self._on_channel_closed)

    def _on_channel_closed(self) -> None:
        """The actor's end of the socket closed: its process is gone."""
        self._failed(f"worker {self.worker_id} (ray actor, pid {self.pid}) closed its channel")

    def _failed(self, reason: object) -> WorkerFailedError:
        """The actor is gone: mark it dead once, fail what it held, let the manager replace it."""
        if self.alive:
            self.alive = False
            self.loaded_variants.clear()
            self._kill_actor()  # a closed channel may leave the process alive in its bundle; the replacement needs the bundle
            if self.channel is not None:
                self.channel.close(f"worker {self.worker_id} (ray actor) exited while holding this request")
            if not self._stopping:
                logger.error("ray worker %s died: %s", self.worker_id, reason)
                if self.on_exit:
                    self.on_exit(self)
        return WorkerFailedError(f"worker {self.worker_id} (ray actor) exited while holding this request")

    def _check_alive(self) -> None:
        if not self.alive:
            raise WorkerFailedError(f"worker {self.worker_id} is not running")

    async def load(
        self, variant_key: str, path: str, input_name: str, output_name: str, input_shape: Sequence[int], *,
        warmup: int = 2, profile_batch_sizes: Sequence[int] = (), profile_repeats: int = 5,
    ) -> dict:
        self._check_alive()
        message = load_message(variant_key, path, input_name, output_name, input_shape, warmup=warmup,
                               profile_batch_sizes=profile_batch_sizes, profile_repeats=profile_repeats)
        if self.channel is not None:
            return await counted_load(self, variant_key, self.channel.load(message))
        return await counted_load(self, variant_key, self._load_through_actor_call(variant_key, message))

    async def _load_through_actor_call(self, variant_key: str, message: dict) -> dict:
        try:
            return await self._actor.load.remote(message)
        except self._ray.exceptions.RayActorError as error:
            raise self._failed(error) from None
        except self._ray.exceptions.RayTaskError as error:
            raise ModelLoadError(f"variant {variant_key!r} could not be loaded on worker {self.worker_id}: {error.cause}") from None

    async def unload(self, variant_key: str) -> None:
        self.loaded_variants.pop(variant_key, None)  # no batch of it is sent after the unload
        if self.alive:
            if self.channel is not None:
                await self.channel.unload(variant_key)
            else:
                try:
                    await self._actor.unload.remote(variant_key)
                except self._ray.exceptions.RayActorError as error:
                    raise self._failed(error) from None

    async def run(self, variant_key: str, items: Sequence[np.ndarray], burst: bool = False,
                  on_outputs: OutputsCallback | None = None) -> tuple[np.ndarray, float]:  # fmt: skip
        """`burst` is accepted for the `Worker` protocol and ignored: a Ray actor holds one session
        per variant (Ray reserved its CPUs; it may not borrow another actor's). `on_outputs` is
        called early only on the node's own channel; over Ray's object store the caller gets
        the outputs when this returns."""
        self._check_alive()
        if self.channel is not None:
            return await self.channel.run(variant_key, items, on_outputs=on_outputs)
        async with self._run_lock:
            self._check_alive()
            try:
                outputs, compute_ms = await self._actor.run.remote(variant_key, np.stack(items))
            except self._ray.exceptions.RayActorError as error:
                raise self._failed(error) from None
            return np.array(outputs), compute_ms

    async def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        if self._actor is not None and self._ray is not None:
            self._kill_actor()
        self.alive = False
        if self.channel is not None:
            self.channel.close(f"worker {self.worker_id} stopped")


class RayBackend:
    """Workers as Ray actors: `reserve` takes one placement-group bundle per worker, all or none,
    and every worker, first or replacement, starts in its own bundle."""

    name = "ray"

    def __init__(self, *, address: str | None = None, device_resource: str | None = None, placement_strategy: str = "PACK",
                 shared_memory_bytes: int = DEFAULT_BLOCK_BYTES):
        check_placement_strategy(placement_strategy)  # at construction, before Ray starts
        self.address = address
        self.device_resource = device_resource
        self.placement_strategy = placement_strategy
        self.shared_memory_bytes = shared_memory_bytes
        self.placement_group: Any = None
        self._placements: dict[str, Placement] = {}

    async def reserve(self, specs: Sequence[WorkerSpec]) -> None:
        # Ray is joined (or started) here, once, on the event loop's thread, before any actor.
        ensure_ray(self.address, local_cpus=sum(spec.intra_op_threads for spec in specs))
        bundles = [worker_resources(spec.device, spec.intra_op_threads, self.device_resource) for spec in specs]
        self.placement_group = await reserve_placement_group(bundles, strategy=self.placement_strategy)
        self._placements = {spec.worker_id: place for spec, place in zip(specs, placements(self.placement_group, len(specs)))}

    def new_worker(self, spec: WorkerSpec, *, on_exit: Callable[[Any], None]) -> RayWorkerHandle:
        return RayWorkerHandle(
            spec.worker_id, device=spec.device, intra_op_threads=spec.intra_op_threads, address=self.address,
            device_resource=self.device_resource, placement=self._placements.get(spec.worker_id),
            shared_memory_bytes=self.shared_memory_bytes, on_exit=on_exit,
        )

    def resources(self) -> dict[str, float]:
        import ray

        return dict(ray.cluster_resources()) if ray.is_initialized() else {}

    def release(self) -> None:
        if self.placement_group is not None:
            release_placement_group(self.placement_group)
            self.placement_group = None
