"""Run a placed workflow: stage models on their workers, requests routed along the DAG.

Every worker named by the deployment is one worker process (ONNX Runtime, shared-memory
tensors, see shoal.runtime.worker), or one Ray actor with `backend="ray"`; a worker that carries several tasks (--shared-workers
plans) holds one session per task and its batching loop pulls from all of them. Each
(task, worker) pair has its own deadline-aware queue in the ordinary Scheduler, keyed
`<task>@<worker>`, so stage batching, stale-request dropping and admission are the same code
the single-model server runs.

Messages go through the executor (hub and spoke): a stage's output comes back to the event
loop, which routes it to the next stage's worker with that stage's smooth weighted round-robin
over the planned shares. A join waits, per request id, until every parent stage has answered,
then concatenates the parents' outputs. On one machine the hub costs one shared-memory copy
per hop; across machines (Ray) stages would send to each other directly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shoal.core.errors import InvalidInputError
from shoal.core.models import Profile
from shoal.profiler.measure import summarise_latencies
from shoal.runtime.backend import Worker, WorkerSpec, make_backend, start_replacement
from shoal.runtime.batch_block import BATCH_SLOTS
from shoal.runtime.errors import BadRequestError, ModelLoadError, ModelNotReadyError, OverloadedError, ServingError
from shoal.runtime.loop_monitor import LoopMonitor
from shoal.runtime.metrics import ServingMetrics
from shoal.runtime.scheduler import Scheduler, monotonic_ms
from shoal.runtime.statistics import VariantStatistics
from shoal.runtime.variant_queue import VariantQueue
from shoal.runtime.workflow.deployment import WorkflowDeployment
from shoal.runtime.workflow.routing import SmoothWeightedRoundRobin
from shoal.zoo.preprocess import resize_images

__all__ = ["WorkflowExecutor", "WorkflowResult", "queue_key"]

logger = logging.getLogger(__name__)

def queue_key(task: str, worker: str) -> str:
    return f"{task}@{worker}"


@dataclass
class WorkflowResult:
    """The sinks' outputs for one request (batch axis first) and where its items ran."""

    outputs: dict[str, np.ndarray]
    workers_by_task: dict[str, list[str]] = field(default_factory=dict)
    latency_ms: float = 0.0
    queue_ms: float = 0.0
    """The largest, over the request's items, of an item's stage queue times summed (stages on
    parallel branches too, as Triton sums an ensemble's composing models)."""
    compute_ms: float = 0.0
    """The same for the stages' batch compute times (each maximum over items on its own)."""


class WorkflowExecutor:
    """Serves one WorkflowDeployment; all methods run on one event loop."""

    def __init__(
        self,
        deployment: WorkflowDeployment,
        base_dir: Path,
        *,
        metrics: ServingMetrics | None = None,
        max_batch_size: int = 16,
        max_request_items: int = 256,
        batches_ahead: int = 1,
        queue_capacity: int = 4096,
        intra_op_threads: int = 1,
        shared_memory_bytes: int = BATCH_SLOTS * 16 * 1024 * 1024,
        backend: str = "local",
        ray_address: str | None = None,
        ray_placement_strategy: str = "PACK",
        ray_device_resource: str | None = None,
        loop_monitor: LoopMonitor | None = None,
    ):
        """`loop_monitor`: the readings of the event loop the workflow is served on, where
        something else runs them (a server's `InferenceService`); without it the executor runs
        its own while it is started."""
        self.deployment = deployment
        self.base_dir = Path(base_dir)
        self.metrics = metrics or ServingMetrics()
        self.max_batch_size = max_batch_size
        self.max_request_items = max_request_items  # a request's items each become a task: bounded as a model's are
        self.queue_capacity = queue_capacity
        self.intra_op_threads = intra_op_threads
        self.shared_memory_bytes = shared_memory_bytes
        self.backend = make_backend(backend, shared_memory_bytes=shared_memory_bytes, ray_address=ray_address,
                                    ray_placement_strategy=ray_placement_strategy, ray_device_resource=ray_device_resource)
        # The loop's readings: send-ahead stops on a saturated loop, and its lag enters every prediction.
        self._owns_loop_monitor = loop_monitor is None
        self.scheduler = Scheduler(self.metrics, batches_ahead=batches_ahead, loop_monitor=loop_monitor)
        self._loop_monitor_task: asyncio.Task | None = None
        self.workers: dict[str, Worker] = {}
        self.profiles: dict[str, Profile] = {}  # queue key -> latency measured at load
        self.routers = {name: SmoothWeightedRoundRobin(task.load_shares_rps) for name, task in deployment.tasks.items()}
        self.items_by_route: dict[str, dict[str, int]] = {name: dict.fromkeys(task.load_shares_rps, 0) for name, task in deployment.tasks.items()}
        self.order = deployment.topological_tasks()
        self.sinks = deployment.sinks
        self._request_ids = itertools.count()
        self._downstream_ms: dict[str, float] = {}
        self._restarts: set[asyncio.Task] = set()
        self.started = False
        # Triton's statistics of the served workflow, kept by its frontends (shoal.runtime.endpoints)
        # per request as for a variant: its stages' queue and compute times summed along its path.
        self.statistics = VariantStatistics()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and load its stages; on any failure stop what started and re-raise."""
        for task_name, task in self.deployment.tasks.items():
            for worker in task.load_shares_rps:
                key = queue_key(task_name, worker)
                self.scheduler.add_queue(VariantQueue(key, self._latency_fn(key), self.max_batch_size, self.queue_capacity))
        try:
            # The plan is a whole: every planned worker gets its place (a Ray bundle), or the deployment does not start.
            await self.backend.reserve([self._spec(worker) for worker in self.deployment.workers])
            for worker in self.deployment.workers:
                self.workers[worker] = self._new_handle(worker)
            await asyncio.gather(*(handle.start() for handle in self.workers.values()))
            await asyncio.gather(*(self._load_at_start(task_name, worker) for task_name, task in self.deployment.tasks.items() for worker in task.load_shares_rps))
        except BaseException:
            await self.stop()
            raise
        for handle in self.workers.values():
            self.scheduler.attach_worker(handle)
        if self._owns_loop_monitor:
            self._loop_monitor_task = asyncio.create_task(self.scheduler.loop_monitor.run(), name=f"workflow-{self.deployment.name}-loop-monitor")
        self._downstream_ms = self._downstream_latency_ms()
        self.started = True

    async def _load_at_start(self, task_name: str, worker: str) -> None:
        """`_load`, where a stage model ONNX Runtime refuses (a wrong input name, an item shape
        it does not take, not an ONNX file) is the deployment's error, named as one."""
        try:
            await self._load(task_name, worker)
        except ModelLoadError as error:
            raise InvalidInputError(
                f"workflow {self.deployment.name!r}: tasks.{task_name}.model ({self.deployment.tasks[task_name].model.path}) "
                f"could not be loaded: {error}"
            ) from None

    def _spec(self, worker: str) -> WorkerSpec:
        return WorkerSpec(worker, self.deployment.device_of(worker), self.intra_op_threads)

    def _new_handle(self, worker: str) -> Worker:
        return self.backend.new_worker(self._spec(worker), on_exit=self._on_worker_exit)

    def _on_worker_exit(self, handle) -> None:
        """A stage worker died: its in-flight items already got errors, its queued ones go to the
        other workers of their tasks (`_hand_over`); bring it back with its stages. A replacement
        that dies while it starts is not the worker's handle yet: its start fails, and the restart
        under way tries again (a second restart would leave a worker behind, unstopped)."""
        if self.started and self.workers.get(handle.worker_id) is handle:
            for task_name, task in self.deployment.tasks.items():
                if handle.worker_id in task.load_shares_rps:
                    self._hand_over(task_name, handle.worker_id)
            task = asyncio.get_running_loop().create_task(self._restart(handle.worker_id))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)

    @property
    def ready(self) -> bool:
        """Started, and every task has a worker serving it: while a task's only workers restart
        (or could not reload its stage), every request would be a 503."""
        return self.started and all(
            any(self._serves(task_name, worker) for worker in task.load_shares_rps) for task_name, task in self.deployment.tasks.items()
        )

    def _serves(self, task_name: str, worker: str) -> bool:
        """The worker is running and holds the task's stage (a replacement that could not load it does not)."""
        handle = self.workers.get(worker)
        # attached too: a replacement holds its stages one by one before the scheduler takes it
        return handle is not None and handle in self.scheduler.workers_for(queue_key(task_name, worker))

    def _hand_over(self, task_name: str, worker: str) -> None:
        """Move what waits in `worker`'s queue for `task_name` to the other workers serving that
        task, in planned shares; with none, answer it now (ModelNotReadyError). Nothing else
        would: a queue is only ever taken by its own worker."""
        queue = self.scheduler.queues.get(queue_key(task_name, worker))
        if queue is None or not len(queue):
            return
        stranded = queue.take(len(queue))
        router = self.routers[task_name]
        for item in stranded:
            sibling = router.pick(lambda other: other != worker and self._serves(task_name, other))
            if sibling is None:
                if not item.future.done():
                    item.future.set_exception(ModelNotReadyError(f"the worker of task {task_name!r} that held this item stopped and no other serves the task; retry shortly"))
                continue
            self.scheduler.requeue(queue_key(task_name, sibling), [item])

    async def _restart(self, worker: str) -> None:
        def failed(error: Exception, retry_in_s: float) -> None:
            logger.error("stage worker %s could not be replaced (%s); next try in %.0f s", worker, error, retry_in_s)
            self.metrics.worker_replacements_failed.inc()

        handle = await start_replacement(lambda: self._new_handle(worker), failed)
        self.workers[worker] = handle
        stages = [task_name for task_name, task in self.deployment.tasks.items() if worker in task.load_shares_rps]
        outcomes = await asyncio.gather(*(self._load(task_name, worker) for task_name in stages), return_exceptions=True)
        for task_name, outcome in zip(stages, outcomes):
            if isinstance(outcome, BaseException):  # the worker serves the stages that did load
                logger.error("stage worker %s: could not reload %s after its restart: %s", worker, task_name, outcome)
                self._hand_over(task_name, worker)  # items routed to it while it restarted
        self.scheduler.attach_worker(handle)
        self.metrics.worker_restarts.inc()

    async def _load(self, task_name: str, worker: str) -> None:
        model = self.deployment.tasks[task_name].model
        path = Path(model.path) if Path(model.path).is_absolute() else self.base_dir / model.path
        key = queue_key(task_name, worker)
        sizes = sorted({1, 2, 4, 8, self.max_batch_size} & set(range(1, self.max_batch_size + 1)))
        reply = await self.workers[worker].load(
            key, str(path), model.input_name, model.output_name, model.item_shape, profile_batch_sizes=sizes, profile_repeats=5
        )
        batches = {int(size): summarise_latencies(int(size), samples) for size, samples in reply["latency_ms"].items()}
        self.profiles[key] = Profile(
            family=self.deployment.name, variant=self.deployment.tasks[task_name].variant,
            device=self.deployment.device_of(worker), batches=batches, load_time_ms=reply["load_ms"],
        )

    def _latency_fn(self, key: str):
        def batch_latency_ms(batch_size: int) -> float:
            profile = self.profiles.get(key)
            return profile.batch_latency_ms(batch_size, "p50") if profile else float("inf")

        return batch_latency_ms

    def _downstream_latency_ms(self) -> dict[str, float]:
        """Per task, the slowest chain of batch-1 latencies after it: time a request still needs."""
        remaining: dict[str, float] = {}
        for task_name in reversed(self.order):
            after = 0.0
            for child in self.deployment.children(task_name):
                child_ms = max(self._latency_fn(queue_key(child, worker))(1) for worker in self.deployment.tasks[child].load_shares_rps)
                after = max(after, child_ms + remaining[child])
            remaining[task_name] = after
        return remaining

    async def stop(self) -> None:
        self.started = False
        restarts = list(self._restarts)
        for task in restarts:
            task.cancel()
        await asyncio.gather(*restarts, return_exceptions=True)  # a replacement being started is stopped first
        await self.scheduler.close()
        if self._loop_monitor_task is not None:
            self._loop_monitor_task.cancel()
            await asyncio.gather(self._loop_monitor_task, return_exceptions=True)
            self._loop_monitor_task = None
        await asyncio.gather(*(handle.stop() for handle in self.workers.values()), return_exceptions=True)
        self.backend.release()

    # -- serving --------------------------------------------------------------------------------
    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Validate one request's source tensors; returns its batch size (items)."""
        expected = set(self.deployment.sources)
        if set(inputs) != expected:
            raise BadRequestError(f"workflow {self.deployment.name!r} takes inputs {sorted(expected)}, got {sorted(inputs)}")
        batch_sizes = set()
        for name, tensor in inputs.items():
            shape = self.deployment.sources[name].item_shape
            if tensor.ndim != len(shape) + 1 or tuple(tensor.shape[1:]) != tuple(shape):
                raise BadRequestError(f"input {name!r} must have shape [batch, {', '.join(map(str, shape))}], got {list(tensor.shape)}")
            if tensor.dtype not in (np.float32, np.uint8):
                raise BadRequestError(f"input {name!r} must be FP32 or UINT8, got {tensor.dtype}")
            batch_sizes.add(tensor.shape[0])
        if len(batch_sizes) != 1 or 0 in batch_sizes:
            raise BadRequestError(f"every input must carry the same number (>= 1) of items, got {sorted(batch_sizes)}")
        count = batch_sizes.pop()
        if count > self.max_request_items:
            raise BadRequestError(f"a request to workflow {self.deployment.name!r} may carry at most {self.max_request_items} items, got {count}; split it")
        return count

    async def infer(self, inputs: Mapping[str, np.ndarray], *, slo_ms: float | None = None, priority: int = 0,
                    received_ms: float | None = None) -> WorkflowResult:  # fmt: skip
        """Run every item of the request through the DAG; the sinks' outputs in item order.
        `received_ms`: when a frontend got the request (its SLO runs from then, as a model's
        does); now by default."""
        if not self.started:
            raise OverloadedError(f"workflow {self.deployment.name!r} is not running", retry_after_s=5.0)
        arrival_ms = monotonic_ms() if received_ms is None else received_ms
        count = self.check_inputs(inputs)
        deadline_ms = arrival_ms + (slo_ms or self.deployment.slo_ms)
        items = [
            asyncio.ensure_future(self._run_item(next(self._request_ids), {name: tensor[index] for name, tensor in inputs.items()}, deadline_ms, priority))
            for index in range(count)
        ]
        try:
            answers = await asyncio.gather(*items)
        except BaseException:
            for item in items:
                item.cancel()
            raise
        outputs = {sink: np.stack([answer[0][sink] for answer in answers]) for sink in self.sinks}
        workers_by_task = {task: [answer[1][task] for answer in answers] for task in self.order}
        queue_ms = max(sum(queue for queue, _ in answer[2].values()) for answer in answers)
        compute_ms = max(sum(compute for _, compute in answer[2].values()) for answer in answers)
        return WorkflowResult(outputs, workers_by_task, monotonic_ms() - arrival_ms, queue_ms, compute_ms)

    async def _run_item(self, request_id: int, sources: dict[str, np.ndarray], deadline_ms: float, priority: int):
        """One request id through the DAG: each task starts as soon as all its inputs are in.
        Returns the sinks' outputs, the worker each task ran on and each task's queue and compute ms."""
        results: dict[str, asyncio.Future] = {}
        placed: dict[str, str] = {}
        timings: dict[str, tuple[float, float]] = {}  # per task: (queue ms, compute ms)

        async def run_task(task_name: str) -> np.ndarray:
            task = self.deployment.tasks[task_name]
            if task.inputs[0] in sources:
                tensor = sources[task.inputs[0]]
                tensor = tensor.astype(np.float32) / 255.0 if tensor.dtype == np.uint8 else tensor.astype(np.float32, copy=False)
                if task.model.resize_to_px and tensor.shape[-1] != task.model.resize_to_px:
                    tensor = resize_images(tensor[None], task.model.resize_to_px)[0]
            else:
                parents = [await results[parent] for parent in task.inputs]  # the join, by request id
                tensor = parents[0] if len(parents) == 1 else np.concatenate([p.reshape(-1) for p in parents])
            if tuple(tensor.shape) != task.model.item_shape:
                # The request's sources were checked (`check_inputs`) and the deployment's
                # source-fed stages at load: what reaches here is a parent stage's output that
                # does not fit, the deployment's fault and not the client's.
                raise ServingError(f"workflow {self.deployment.name!r}: task {task_name!r} expects items of shape "
                                   f"{list(task.model.item_shape)} but its inputs give {list(tensor.shape)}; fix the deployment's item_shape")  # fmt: skip
            worker = self.routers[task_name].pick(lambda worker: self._serves(task_name, worker))
            if worker is None:
                raise ModelNotReadyError(f"no worker of task {task_name!r} is serving right now (a stage worker is being restarted); retry shortly")
            placed[task_name] = worker
            admit_by_ms = deadline_ms - self._downstream_ms.get(task_name, 0.0)
            future = self.scheduler.submit(queue_key(task_name, worker), np.ascontiguousarray(tensor), deadline_ms, priority, admit_by_ms=admit_by_ms)
            self.items_by_route[task_name][worker] += 1  # counted once admitted
            try:
                output, queue_ms, compute_ms, _ = await future
            except asyncio.CancelledError:  # the request was given up: its item must not hold a place
                # in whichever of the task's queues it waits now (`_hand_over` moves items)
                for other in task.load_shares_rps:
                    self.scheduler.withdraw(queue_key(task_name, other), [future])
                raise
            timings[task_name] = (queue_ms, compute_ms)
            return output

        for task_name in self.order:
            results[task_name] = asyncio.ensure_future(run_task(task_name))
        try:
            outputs = {sink: await results[sink] for sink in self.sinks}
        except BaseException:
            for future in results.values():
                future.cancel()
            raise
        return outputs, placed, timings

    # -- reporting ------------------------------------------------------------------------------
    def metadata(self) -> dict:
        """KServe v2 model metadata: the sources are the inputs, the sinks the outputs."""
        return {
            "name": self.deployment.name,
            "versions": ["1"],
            "platform": "shoal_workflow",
            # FP32 in [0, 1]; UINT8 is accepted too and scaled by 1/255.
            "inputs": [{"name": name, "datatype": "FP32", "shape": [-1, *source.item_shape]} for name, source in self.deployment.sources.items()],
            "outputs": [{"name": sink, "datatype": "FP32", "shape": [-1, -1]} for sink in self.sinks],
        }

    def traffic_report(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per task and worker: planned share, measured share of items, items."""
        report: dict[str, dict[str, dict[str, float]]] = {}
        for task_name, task in self.deployment.tasks.items():
            total_planned = sum(task.load_shares_rps.values())
            counts = self.items_by_route[task_name]
            total_items = sum(counts.values())
            report[task_name] = {
                worker: {
                    "planned_rps": share,
                    "planned_share": share / total_planned,
                    "items": counts[worker],
                    "measured_share": counts[worker] / total_items if total_items else 0.0,
                }
                for worker, share in task.load_shares_rps.items()
            }
        return report

