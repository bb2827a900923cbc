"""The inference service behind every frontend: model names, variant choice, admission, answers.

Frontends (HTTP, gRPC) decode the wire format and call `InferenceService.infer`; this module
owns the naming (a family name is a model-less endpoint, `<family>.<variant>` is one exact
variant), validates the tensor against the family, asks the policy for a variant, preprocesses
(area resize to the variant's input size) and hands items to the scheduler. It is the one
place where requests meet the worker manager, so both frontends behave identically.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoal import __version__
from shoal.core.errors import InvalidInputError
from shoal.core.models import Device, Family, Profile, Variant
from shoal.profiler.measure import summarise_latencies
from shoal.planner.batching import loop_gate_refusal_probability
from shoal.planner.serving_policy import Policy, Query, Selection, VariantOption, make_policy
from shoal.runtime.batch_block import BatchBlock, items_per_batch
from shoal.runtime.errors import BadRequestError, DeadlineExceededError, ModelNotFoundError, ModelNotReadyError, OverloadedError
from shoal.runtime.inference_request import check_input, preprocess, requirements
from shoal.runtime.loop_monitor import LoopMonitor
from shoal.runtime.metrics import ServingMetrics
from shoal.runtime.modelless import choose_modelless, modelless_variants, raise_unmet, variant_cost_per_1000_usd
from shoal.runtime.scheduler import Scheduler, monotonic_ms
from shoal.runtime.shared_memory import SystemSharedMemory
from shoal.runtime.statistics import VariantStatistics
from shoal.runtime.variant_queue import VariantQueue
from shoal.runtime.worker_manager import ServeConfig, WorkerManager
from shoal.zoo.repository import ModelRepository

__all__ = ["GATE_REFUSAL_MESSAGE", "InferenceResult", "InferenceService", "ServeConfig", "ServedVariant"]

logger = logging.getLogger(__name__)

GATE_REFUSAL_MESSAGE = "the server's frontend is saturated; retry later"
"""What a request refused by `InferenceService.refuse_at_gate` is told (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""


@dataclass
class ServedVariant:
    family: Family
    variant: Variant
    model_path: str
    latency: Profile | None = None  # measured by the worker at load time
    repository_profile: Profile | None = None  # `shoal profile` output, known before any load
    planner_view: tuple | None = field(default=None, repr=False)  # (profile, ModellessVariant), see runtime.modelless
    _latency_cache_for: Profile | None = field(default=None, init=False, repr=False, compare=False)
    _latency_cache_ms: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)
    key: str = field(init=False, compare=False)
    """`<family>.<variant>`: formatted once (read several times per request)."""

    def __post_init__(self) -> None:
        self.key = f"{self.family.name}.{self.variant.name}"

    def batch_latency_ms(self, batch_size: int) -> float:
        if self.latency is None:
            return float("inf")
        # The scheduler asks this several times per request; interpolating the profile each time
        # cost about 5% of the frontend's CPU, so answers are kept per profile and batch size.
        if self._latency_cache_for is not self.latency:
            self._latency_cache_for, self._latency_cache_ms = self.latency, {}
        cached = self._latency_cache_ms.get(batch_size)
        if cached is None:
            # The median of the worker's warm-up runs: on a shared machine the tail of a handful
            # of samples is mostly other processes' noise, which would make the batcher refuse work.
            cached = self._latency_cache_ms[batch_size] = self.latency.batch_latency_ms(batch_size, "p50")
        return cached


@dataclass
class InferenceResult:
    model_name: str
    output_name: str
    outputs: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


class InferenceService:
    """Serving state of one server; all methods run on the server's event loop."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.repository = ModelRepository(config.repository)
        self.metrics = ServingMetrics()
        # The server's event loop, read by the overload gate and the scheduler here, and by the
        # scheduler of a workflow served beside the models (`WorkflowExecutor`); run by `start`.
        self.loop_monitor = LoopMonitor(self.metrics)
        self.scheduler = Scheduler(self.metrics, max_queue_delay_ms=config.max_queue_delay_ms, batches_ahead=config.batches_ahead,
                                   loop_monitor=self.loop_monitor)
        self.policy: Policy = make_policy(config.policy)
        self.families: dict[str, Family] = {}
        self.variants: dict[str, ServedVariant] = {}  # key -> variant
        self.manager = WorkerManager(config, self.scheduler, self.metrics, self._on_variant_loaded)
        self.requests_by_variant: dict[str, int] = {}  # items admitted per variant, read by the controller
        self.refused_demand_by_variant: dict[str, int] = {}  # model-less queries refused with nothing loaded (`_ask_for_a_load`)
        self.requests_by_class: dict[tuple, int] = {}  # items per (family, requirements), for the autoscaler
        self.requests_by_exact_variant: dict[str, int] = {}  # items asked of a variant by its own name, for the autoscaler
        self.arrival_rps_by_variant: dict[str, float] = {}  # kept by the controller, read by model-less selection
        self.operator_unloaded: set[str] = set()  # unloaded on request: the controller must not bring them back
        self._gate_random = random.Random()
        self._recent_slo_ms: dict[str, float] = {}  # per served model name, see _remember_slo
        # Regions same-host clients registered, for both frontends; never the workers' own blocks.
        self.shared_memory = SystemSharedMemory(reserved_names=BatchBlock.created_names)
        self.started = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        Device.parse(self.config.device)
        for family_name in self.repository.family_names():
            family = self.repository.load_family(family_name)
            self._check_unique_name(family_name)
            self.families[family_name] = family
            for variant in self.repository.variants(family_name):
                served = ServedVariant(
                    family, variant, str(self.repository.model_path(family_name, variant.name)),
                    repository_profile=self.repository.load_profile(family_name, variant.name, Device.parse(self.config.device)),
                )
                self._check_unique_name(served.key)
                self.variants[served.key] = served
                self.scheduler.add_queue(self._new_queue(served))
        await self.manager.start()
        self._lag_task = asyncio.create_task(self.loop_monitor.run(), name="loop-monitor")
        preload = self.config.preload if self.config.preload is not None else tuple(self.variants)
        for name in preload:
            await self.load_model(name)
        self.manager.serving = True  # later loads leave the other workers serving
        self.started = True

    def _new_queue(self, served: ServedVariant) -> VariantQueue:
        # No batch larger than a worker's shared-memory slot holds: `--max-batch-size 256` of
        # 128 px images failed every request of such a batch.
        item_shape = (served.family.input_channels, served.variant.input_size_px, served.variant.input_size_px)
        max_batch_size = min(self.config.max_batch_size, items_per_batch(self.config.shared_memory_bytes, item_shape))
        return VariantQueue(served.key, served.batch_latency_ms, max_batch_size, self.config.queue_capacity)

    async def stop(self) -> None:
        self.started = False
        await self.scheduler.close()
        if getattr(self, "_lag_task", None):
            self._lag_task.cancel()
        await self.manager.stop()
        self.shared_memory.close()

    def _on_variant_loaded(self, key: str, reply: dict) -> None:
        served = self.variants[key]
        batches = {int(size): summarise_latencies(int(size), samples) for size, samples in reply.get("latency_ms", {}).items()}
        samples = sum(len(values) for values in reply.get("latency_ms", {}).values())
        if batches and served.latency is not None and 2 * reply.get("disturbed_samples", 0) > samples:
            # Most samples ran beside the worker's own batches (the load is on a thread beside
            # them): slower than the batcher will see. A profile from a quieter load is kept.
            logger.info("%s: kept its earlier profile; %d of %d new samples ran beside batches", key, reply["disturbed_samples"], samples)
        elif batches:
            served.latency = Profile(
                family=served.family.name, variant=served.variant.name, device=self.config.device, batches=batches, load_time_ms=reply.get("load_ms", 0.0)
            )

    # -- naming ---------------------------------------------------------------------------------
    def resolve(self, model_name: str) -> tuple[Family, ServedVariant | None]:
        """A family name (model-less) or `<family>.<variant>`; unknown names are a 404."""
        if model_name in self.families:
            return self.families[model_name], None
        if model_name in self.variants:
            served = self.variants[model_name]
            return served.family, served
        raise ModelNotFoundError(
            f"model {model_name!r} is not served; use a family name ({', '.join(sorted(self.families)) or 'none'}) "
            "or <family>.<variant> (see /v2/repository/index)"
        )

    def model_names(self) -> list[str]:
        return sorted(self.families) + sorted(self.variants)

    def is_ready(self, model_name: str | None = None) -> bool:
        if not self.started:
            return False
        if model_name is None:
            return True
        family, served = self.resolve(model_name)
        keys = [served.key] if served else [k for k, v in self.variants.items() if v.family.name == family.name]
        return any(self.scheduler.workers_for(key) for key in keys)

    def model_metadata(self, model_name: str) -> dict[str, Any]:
        family, served = self.resolve(model_name)
        size = served.variant.input_size_px if served else family.source_image_px
        return {
            "name": model_name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx" if served else "shoal_family",
            "inputs": [{"name": family.input_name, "datatype": "FP32", "shape": [-1, family.input_channels, size, size]}],
            "outputs": [{"name": family.output_name, "datatype": "FP32", "shape": [-1, family.num_classes]}],
        }

    def batch_sizes(self, model_name: str) -> list[int]:
        """The largest batch each variant behind `model_name` is run in (one for a variant, one
        per distinct size for a family): `--max-batch-size`, or less where a worker's
        shared-memory slot holds fewer items of the variant's input size."""
        family, served = self.resolve(model_name)
        keys = [served.key] if served else [key for key, other in self.variants.items() if other.family.name == family.name]
        return sorted({self.scheduler.queues[key].max_batch_size for key in keys})

    @staticmethod
    def check_version(model_name: str, version: str | None) -> None:
        """Every model has one version, "1" (what metadata lists); a path or request naming
        another is a 404 rather than an answer from version 1 under another number."""
        if version not in (None, "", "1"):
            raise ModelNotFoundError(f"model {model_name!r} has no version {version!r}: shoal serves version \"1\" of each model (or name none)")

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "shoal", "version": __version__, "extensions": ["binary_tensor_data", "classification", "model_repository", "parameters", "statistics", "system_shared_memory"]}

    def model_statistics(self, model_name: str = "") -> list[dict[str, Any]]:
        """Triton's `model_stats` for a variant, for each variant of a family, or ("") for every
        variant served; a family's requests count under the variant that answered them."""
        if model_name:
            family, served = self.resolve(model_name)
            keys = [served.key] if served else [key for key, variant in self.variants.items() if variant.family.name == family.name]
        else:
            keys = list(self.variants)
        return [self.metrics.statistics.get(key, VariantStatistics()).as_json(key) for key in keys]

    def repository_index(self) -> list[dict[str, str]]:
        index = []
        for name in self.model_names():
            state = "READY" if self.is_ready(name) else "UNAVAILABLE"
            index.append({"name": name, "version": "1", "state": state, "reason": ""})
        return index

    def _check_unique_name(self, name: str) -> None:
        """Names may hold dots, so family `a` with variant `b.c` and family `a.b` with variant `c`
        would both be `a.b.c` (and family `a.b` would hide variant `b` of `a`): one would silently
        replace or shadow the other. Refused, naming what holds the name already."""
        if name in self.variants or name in self.families:
            taken = f"family {name!r}" if name in self.families else f"variant {self.variants[name].variant.name!r} of family {self.variants[name].family.name!r}"
            raise InvalidInputError(f"model name {name!r} is taken already by {taken}; rename one of them in the repository")

    async def register_variant(self, family_name: str, variant_name: str, model_bytes: bytes) -> dict[str, Any]:
        """Measure (accuracy, profile on the serving device) and register a new variant; it is
        selectable by family endpoints as soon as this returns (loaded on demand)."""
        if family_name not in self.families:
            raise ModelNotFoundError(f"family {family_name!r} is not served; register variants into an existing family")
        key = f"{family_name}.{variant_name}"
        same = self.variants.get(key)
        if same is None or same.family.name != family_name:  # a plain duplicate: the repository says "already exists"
            try:
                self._check_unique_name(key)
            except InvalidInputError as error:
                raise BadRequestError(str(error)) from None
        import tempfile
        from pathlib import Path

        from shoal.zoo.register import register_measured_variant

        with tempfile.TemporaryDirectory() as scratch:
            model_path = Path(scratch) / "model.onnx"
            model_path.write_bytes(model_bytes)
            try:
                variant, profiles = await asyncio.to_thread(
                    register_measured_variant, self.repository, family_name, variant_name, model_path, [Device.parse(self.config.device)],
                    profile_batch_sizes=[b for b in self.config.profile_batch_sizes if b <= self.config.max_batch_size],
                )
            except InvalidInputError as error:  # a bad model or name is the client's to fix (the server's scratch path is no help)
                raise BadRequestError(str(error).replace(str(model_path), "the uploaded model")) from None
        family = self.families[family_name]
        served = ServedVariant(family, variant, str(self.repository.model_path(family_name, variant.name)), repository_profile=profiles[0])
        self.variants[served.key] = served
        self.scheduler.add_queue(self._new_queue(served))
        logger.info("registered %s (accuracy %.4f)", served.key, variant.accuracy)
        return {"model": served.key, "accuracy": variant.accuracy, "input_size_px": variant.input_size_px,
                "latency_ms_batch_1": profiles[0].batch_latency_ms(1, "p50"), "device": self.config.device}

    async def load_model(self, model_name: str) -> None:
        family, served = self.resolve(model_name)
        keys = [served.key] if served else [k for k, v in self.variants.items() if v.family.name == family.name]
        for key in keys:
            self.operator_unloaded.discard(key)
            await self.manager.ensure_loaded(self.variants[key])

    async def unload_model(self, model_name: str) -> None:
        family, served = self.resolve(model_name)
        keys = [served.key] if served else [k for k, v in self.variants.items() if v.family.name == family.name]
        for key in keys:
            self.operator_unloaded.add(key)
            await self.manager.unload(key)

    async def set_replicas(self, model_name: str, replicas: int, *, by_operator: bool = True) -> int:
        """Run an exact variant on `replicas` workers (0 unloads it); returns the count reached.
        An operator's count is a load or an unload as far as `operator_unloaded` goes (the
        autoscaler's, `by_operator=False`, is not)."""
        _, served = self.resolve(model_name)
        if served is None:
            raise BadRequestError(f"{model_name!r} is a family; replicas are set per variant (<family>.<variant>)")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise BadRequestError("'replicas' must be a non-negative integer")
        if by_operator and replicas > 0:
            self.operator_unloaded.discard(served.key)
        elif by_operator:
            self.operator_unloaded.add(served.key)
        return await self.manager.set_replicas(served, replicas)

    def replica_counts(self) -> dict[str, int]:
        return {key: len(self.scheduler.workers_for(key)) for key in self.variants}

    # -- inference ------------------------------------------------------------------------------
    def refuse_at_gate(self, model_name: str, *, workflow_slo_ms: float | None = None) -> bool:
        """Whether the frontends (HTTP before reading the body, gRPC before decoding the tensor)
        refuse a request for `model_name` on arrival, counted as shed when so:
        `loop_gate_refusal_probability` of the event loop's lag and busy share, with all refused
        at `max_loop_lag_share` (0: never) of the shortest SLO recently admitted for the model
        (`workflow_slo_ms` for a served workflow, whose name is then `model_name`).

        Why a gate of its own: when the event loop itself is the bottleneck (light models at high
        rates), requests wait in the sockets before any clock of the server starts, and every
        request the loop handles in full adds to that wait, refusals included. Measured: a 429
        from admission cost the loop ~86 us of CPU, so at 14,000 req/s it could not even refuse
        fast enough and the client waited seconds; a refusal here, from a prebuilt answer with
        the body unread, costs about what uvicorn itself does (20-26 us per request, measured
        bare). The SLO comes from earlier requests because this one's is in its unread body;
        relative to it because a lag that ruins a 50 ms SLO is harmless to a 1 s one (a few
        closed-loop clients with large JSON bodies keep a loop tens of milliseconds late without
        any request missing). Edge sessions' frames come over their WebSocket, not through here."""
        share = self.config.max_loop_lag_share
        if share <= 0.0:
            return False
        if workflow_slo_ms is None and model_name not in self.variants and model_name not in self.families:
            return False  # not a model: its 404 says more than a 429 would (and costs no more)
        if workflow_slo_ms is not None:
            slo_ms = workflow_slo_ms
        else:
            slo_ms = self._recent_slo_ms.get(model_name, self.config.default_slo_ms)
        lag_ms, busy_share = self.loop_monitor.load()
        probability = loop_gate_refusal_probability(lag_ms, share * slo_ms, busy_share)
        if probability == 0.0 or (probability < 1.0 and self._gate_random.random() >= probability):
            return False
        self.metrics.outcome(model_name, "", "shed")
        if model_name in self.variants:  # a failure in the variant's statistics (a family's is not chosen yet)
            self.metrics.variant_statistics(model_name).failed(0.0)
        return True

    def _remember_slo(self, model_name: str, slo_ms: float) -> None:
        """Keep the shortest SLO recently admitted for `model_name` (for `refuse_at_gate`):
        a shorter one takes effect at once, a longer one only gradually (2% of the way per
        request), so that clients with a tight SLO are not exposed by others with a loose one on
        the same model. Only admitted requests that came through the gate count: one refused
        for an SLO it could never meet, or an edge frame's remaining budget, does not."""
        recent = self._recent_slo_ms.get(model_name)
        self._recent_slo_ms[model_name] = slo_ms if recent is None or slo_ms <= recent else recent + 0.02 * (slo_ms - recent)

    def _choose(self, family: Family, query: Query, priority: int = 0) -> Selection:
        now = monotonic_ms()
        options = []
        for key, served in self.variants.items():
            if served.family.name != family.name:
                continue
            loaded = bool(self.scheduler.workers_for(key)) and served.latency is not None
            options.append(
                VariantOption(
                    name=key,
                    accuracy=served.variant.accuracy or 0.0,
                    input_size_px=served.variant.input_size_px,
                    loaded=loaded,
                    # As admission sees it: the learnt error comes on top of the prediction.
                    predicted_latency_ms=(
                        self.scheduler.predicted_finish_ms(key, now, priority) + self.scheduler.admission_margin_ms(key, now, priority)
                        if loaded else float("inf")
                    ),
                    cost_per_1000_usd=variant_cost_per_1000_usd(self, served),
                )
            )
        return self.policy.select(query, options)

    async def infer(
        self, model_name: str, inputs: dict[str, np.ndarray], parameters: dict[str, Any], requested_outputs: list[str],
        *, received_ms: float | None = None, gated: bool = False,
    ) -> InferenceResult:
        """`received_ms` (monotonic) is when the frontend got the request: the SLO clock starts
        there, so reading and decoding the body count against the deadline too. `gated`: the
        request passed `refuse_at_gate`, whose SLO it then informs once admitted."""
        arrival_ms = monotonic_ms() if received_ms is None else received_ms
        family, served = self.resolve(model_name)
        stated = requirements(parameters, self.config.default_slo_ms)
        slo_ms, priority = stated.slo_ms, stated.priority
        tensor = check_input(family, inputs, self.config.max_request_items)
        for name in requested_outputs:
            if name != family.output_name:
                raise BadRequestError(f"output {name!r} does not exist; {model_name!r} has output {family.output_name!r}")
        by_exact_name = served is not None
        if served is None:
            query_class = (family.name, *stated.query_class)
            self.requests_by_class[query_class] = self.requests_by_class.get(query_class, 0) + tensor.shape[0]
            # The policy must judge variants by the budget admission will hold them to (the SLO
            # times the admission headroom), or it picks one that admission then refuses.
            remaining_ms = slo_ms * self.config.admission_headroom - (monotonic_ms() - arrival_ms)
            if self.policy.name == "modelless":
                served = await choose_modelless(self, model_name, family, stated, tensor.shape[-1], remaining_ms)
            else:
                query = Query(slo_ms=remaining_ms, min_accuracy=stated.min_accuracy, input_size_px=tensor.shape[-1],
                              max_cost_per_1000_usd=stated.max_cost_per_1000_usd)
                selection = self._choose(family, query, priority)
                if selection.variant is None:
                    raise_unmet(model_name, stated, list(modelless_variants(self, family, tensor.shape[-1]).values()), selection.reason, remaining_ms)
                served = self.variants[selection.variant]
            self.metrics.child(self.metrics.policy_decisions, family.name, served.variant.name, self.policy.name).inc()
        elif not self.scheduler.workers_for(served.key):
            raise ModelNotReadyError(f"variant {served.key!r} is not loaded; POST /v2/repository/models/{served.key}/load")
        if tensor.shape[-1] < served.variant.input_size_px:
            raise BadRequestError(
                f"input {family.input_name!r} is {tensor.shape[-1]} px but {served.key} needs at least {served.variant.input_size_px} px"
            )
        items = preprocess(tensor, served.variant)
        self.requests_by_variant[served.key] = self.requests_by_variant.get(served.key, 0) + len(items)
        if by_exact_name:
            self.requests_by_exact_variant[served.key] = self.requests_by_exact_variant.get(served.key, 0) + len(items)
        deadline_ms = arrival_ms + slo_ms
        admit_by_ms = arrival_ms + slo_ms * self.config.admission_headroom
        futures = []
        try:
            for item in items:
                futures.append(self.scheduler.submit(served.key, item, deadline_ms, priority, admit_by_ms=admit_by_ms))
        except OverloadedError:
            for future in futures:
                future.cancel()
            self.scheduler.withdraw(served.key, futures)
            self.metrics.outcome(model_name, served.key, "shed", monotonic_ms() - arrival_ms)
            raise
        self.metrics.child(self.metrics.request_inputs, served.key).inc(len(futures))
        if gated:
            self._remember_slo(model_name, slo_ms)
        try:
            # One item (nearly every request): awaited directly, since gather would add a
            # callback's turn through the event loop before this coroutine resumes.
            results = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        # CancelledError: the client went away (a gRPC cancel or deadline, a stream closed).
        except (asyncio.CancelledError, Exception) as error:
            for future in futures:
                future.cancel()
            # Cancelled ones may still be queued (gather cancels them when the client goes away);
            # one answered or failed has left the queue.
            self.scheduler.withdraw(served.key, [future for future in futures if future.cancelled()])
            if isinstance(error, asyncio.CancelledError):
                outcome = "cancelled"
            elif isinstance(error, OverloadedError):  # refused after all: its place went to a more urgent request
                outcome = "shed"
            else:
                outcome = "dropped" if isinstance(error, DeadlineExceededError) else "failure"
            self.metrics.outcome(model_name, served.key, outcome, monotonic_ms() - arrival_ms)
            raise
        finished_ms = monotonic_ms()
        # An answer after the deadline is worth no more than the deadline error the client planned
        # for, and sending it would hide the miss: it is dropped like one (the event loop's lag is
        # the time the answer still needs to leave).
        if finished_ms + self.loop_monitor.lag_ms > deadline_ms:
            self.metrics.outcome(model_name, served.key, "dropped", finished_ms - arrival_ms)
            raise DeadlineExceededError(
                f"dropped: {served.key} finished {finished_ms - arrival_ms:.1f} ms after arrival, past the {slo_ms:g} ms SLO"
            )
        # One item (nearly every request): its row as a batch of one, without stack's copy.
        outputs = results[0][0][np.newaxis] if len(results) == 1 else np.stack([result[0] for result in results])
        total_ms = finished_ms - arrival_ms
        queue_ms = max(result[1] for result in results)
        compute_ms = max(result[2] for result in results)
        self.metrics.answered(model_name, served.key, queue_ms, total_ms, len(results), compute_ms)
        return InferenceResult(
            model_name=model_name,
            output_name=family.output_name,
            outputs=outputs,
            parameters={
                "shoal_variant": served.key,
                "shoal_queue_ms": round(queue_ms, 3),
                "shoal_compute_ms": round(compute_ms, 3),
                "shoal_batch_size": max(result[3] for result in results),
                "shoal_server_ms": round(total_ms, 3),
            },
        )
