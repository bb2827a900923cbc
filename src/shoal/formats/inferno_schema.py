"""pydantic schemas of the capacity-planning files read by `shoal.formats.inferno`.

Inferno's JSON: keys are matched case-insensitively and unknown keys ignored, as Inferno's Go
reader does; each part validates alone so that errors name the per-part file. shoal's YAML:
units in names, unknown keys rejected. `to_system` turns a document into the planner's
frozen `CapacitySystem`, converting units (Inferno's arrival rate is per minute).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shoal.core.errors import InvalidInputError
from shoal.core.models import Profile
from shoal.core.serialization import load_json
from shoal.planner.capacity import (
    AcceleratorSpec,
    BatchLatencyTable,
    CapacitySystem,
    CurrentAllocation,
    DecodePrefillParams,
    IterationParams,
    ModelPerf,
    ModelTarget,
    OptimizerOptions,
    ServerLoad,
    ServerSpec,
    ServiceClass,
)

__all__ = ["PART_MODELS", "InfernoSystemFile", "ShoalCapacityFile"]


# --------------------------------------------------------------------------------------------
# Inferno's JSON (keys matched case-insensitively, unknown keys ignored as Go does)
# --------------------------------------------------------------------------------------------


class _Inferno(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _match_keys_case_insensitively(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = {(f.alias or name).casefold(): (f.alias or name) for name, f in cls.model_fields.items()}
        result: dict[str, Any] = {}
        for key, value in data.items():
            name = known.get(str(key).casefold(), key)
            if name in result:
                raise ValueError(f"keys {name!r} and {key!r} differ only in case: keep one")
            result[name] = value
        return result


class _InfAccelerator(_Inferno):
    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    multiplicity: int = Field(1, ge=1)
    cost: float = Field(ge=0, description="cents per hour")


class _InfAcceleratorData(_Inferno):
    accelerators: list[_InfAccelerator]


class _InfCount(_Inferno):
    type: str = Field(min_length=1)
    count: int = Field(ge=0)


class _InfCapacityData(_Inferno):
    count: list[_InfCount] = []


class _InfDecode(_Inferno):
    alpha: float = Field(ge=0)
    beta: float = Field(ge=0)


class _InfPrefill(_Inferno):
    gamma: float = Field(ge=0)
    delta: float = Field(ge=0)


class _InfPerf(_Inferno):
    alpha: float = Field(ge=0)
    beta: float = Field(ge=0)
    gamma: float = Field(ge=0)


class _InfModel(_Inferno):
    name: str = Field(min_length=1)
    acc: str = Field(min_length=1)
    accCount: int = Field(1, ge=0)
    maxBatchSize: int = Field(ge=1)
    atTokens: int = Field(0, ge=0)
    decodeParms: _InfDecode | None = None
    prefillParms: _InfPrefill | None = None
    perfParms: _InfPerf | None = None
    alpha: float | None = None
    beta: float | None = None

    @model_validator(mode="after")
    def _one_generation(self) -> "_InfModel":
        g1 = self.decodeParms is not None or self.prefillParms is not None
        if g1 and self.perfParms is not None:
            raise ValueError("has both G1 (decodeParms/prefillParms) and G2 (perfParms) parameters: keep one set")
        if g1 and (self.decodeParms is None or self.prefillParms is None):
            missing = "prefillParms" if self.prefillParms is None else "decodeParms"
            raise ValueError(f"G1 parameters need both decodeParms and prefillParms: add {missing}")
        if self.alpha is not None or self.beta is not None:  # beside G1/G2 too: it would be ignored silently
            raise ValueError(
                "flat alpha/beta are the G0 performance model, which shoal does not read: "
                "give decodeParms {alpha, beta} and prefillParms {gamma, delta} (G1) or perfParms (G2), and drop them"
            )
        return self

    def to_perf(self) -> ModelPerf:
        params: DecodePrefillParams | IterationParams | None = None
        if self.decodeParms is not None and self.prefillParms is not None:
            params = DecodePrefillParams(
                alpha_ms=self.decodeParms.alpha, beta_ms=self.decodeParms.beta,
                gamma_ms=self.prefillParms.gamma, delta_ms=self.prefillParms.delta,
            )
        elif self.perfParms is not None:
            params = IterationParams(alpha_ms=self.perfParms.alpha, beta_ms=self.perfParms.beta,
                                     gamma_ms=self.perfParms.gamma)
        return ModelPerf(
            model=self.name, accelerator=self.acc, max_batch_size=self.maxBatchSize, params=params,
            accelerators_per_replica=max(self.accCount, 1), at_tokens=self.atTokens or None,
        )


class _InfModelData(_Inferno):
    models: list[_InfModel]


class _InfTarget(_Inferno):
    model: str = Field(min_length=1)
    slo_itl: float = Field(0, alias="slo-itl", ge=0)
    slo_ttft: float = Field(0, alias="slo-ttft", ge=0)
    slo_tps: float = Field(0, alias="slo-tps", ge=0)
    slo_ttw: float | None = Field(None, alias="slo-ttw")

    @model_validator(mode="after")
    def _no_waiting_target(self) -> "_InfTarget":
        if self.slo_ttw is not None:  # beside slo-ttft too: it would be ignored silently
            raise ValueError(
                "slo-ttw (G0 waiting-time target) is not read by shoal: give slo-ttft, the time to first token in ms, and drop slo-ttw"
            )
        return self


class _InfServiceClass(_Inferno):
    name: str = Field(min_length=1)
    priority: int = Field(0, ge=0)
    modelTargets: list[_InfTarget] = []


class _InfServiceClassData(_Inferno):
    serviceClasses: list[_InfServiceClass]


class _InfLoad(_Inferno):
    arrivalRate: float = Field(0, ge=0, description="requests per minute")
    avgInTokens: float = Field(0, ge=0)
    avgOutTokens: float = Field(0, ge=0)


class _InfAllocation(_Inferno):
    accelerator: str = ""
    numReplicas: int = Field(0, ge=0)
    cost: float = Field(0, ge=0)
    load: _InfLoad = _InfLoad()


class _InfServer(_Inferno):
    name: str = Field(min_length=1)
    class_: str = Field("", alias="class")
    model: str = Field(min_length=1)
    keepAccelerator: bool = False
    minNumReplicas: int = Field(0, ge=0)
    maxBatchSize: int = Field(0, ge=0)
    maxQueueSize: int | None = Field(None, ge=0)
    currentAlloc: _InfAllocation = _InfAllocation()

    def to_spec(self) -> ServerSpec:
        load = self.currentAlloc.load
        current = self.currentAlloc
        return ServerSpec(
            name=self.name, service_class=self.class_ or "Free", model=self.model,
            load=ServerLoad(arrival_rate_rps=load.arrivalRate / 60.0, avg_in_tokens=load.avgInTokens,
                            avg_out_tokens=load.avgOutTokens),
            max_batch_size=self.maxBatchSize or None, max_queue_size=self.maxQueueSize,
            min_replicas=self.minNumReplicas, keep_accelerator=self.keepAccelerator,
            current=CurrentAllocation(current.accelerator, current.numReplicas, current.cost)
            if current.accelerator else None,
        )


class _InfServerData(_Inferno):
    servers: list[_InfServer]


class _InfOptimizer(_Inferno):
    unlimited: bool = False
    milpSolver: bool = False
    delayedBestEffort: bool = False
    saturationPolicy: Literal["None", "PriorityExhaustive", "RoundRobin", "PriorityRoundRobin"] = "None"


class _InfOptimizerData(_Inferno):
    optimizer: _InfOptimizer = _InfOptimizer()


class _InfParts(_Inferno):
    acceleratorData: _InfAcceleratorData
    capacityData: _InfCapacityData = _InfCapacityData()
    modelData: _InfModelData
    serviceClassData: _InfServiceClassData
    serverData: _InfServerData
    optimizerData: _InfOptimizerData = _InfOptimizerData()


PART_MODELS: dict[str, type[_Inferno]] = {
    "acceleratorData": _InfAcceleratorData, "capacityData": _InfCapacityData, "modelData": _InfModelData,
    "serviceClassData": _InfServiceClassData, "serverData": _InfServerData, "optimizerData": _InfOptimizerData,
}


class InfernoSystemFile(_Inferno):
    system: _InfParts

    def to_system(self, base: Path) -> CapacitySystem:
        parts = self.system
        options = parts.optimizerData.optimizer
        capacity: dict[str, int] = {}
        for count in parts.capacityData.count:
            capacity[count.type] = count.count  # a later entry for a type replaces an earlier one, as in Inferno
        return CapacitySystem(
            accelerators=tuple(
                AcceleratorSpec(name=a.name, type=a.type, cost_cents_per_hour=a.cost, multiplicity=a.multiplicity)
                for a in parts.acceleratorData.accelerators
            ),
            models=tuple(m.to_perf() for m in parts.modelData.models),
            service_classes=tuple(
                ServiceClass(name=c.name, priority=c.priority, targets=tuple(
                    ModelTarget(model=t.model, itl_ms=t.slo_itl or None, ttft_ms=t.slo_ttft or None,
                                tokens_per_s=t.slo_tps or None)
                    for t in c.modelTargets))
                for c in parts.serviceClassData.serviceClasses
            ),
            servers=tuple(s.to_spec() for s in parts.serverData.servers),
            capacity_by_type=capacity,
            options=OptimizerOptions(
                unlimited=options.unlimited, saturation_policy=options.saturationPolicy,
                delayed_best_effort=options.delayedBestEffort, solver="milp" if options.milpSolver else "greedy",
            ),
        )


# --------------------------------------------------------------------------------------------
# shoal's YAML (units in names, unknown keys rejected)
# --------------------------------------------------------------------------------------------


class _Shoal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _YAccelerator(_Shoal):
    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    multiplicity: int = Field(1, ge=1)
    cost_cents_per_hour: float = Field(ge=0)


class _YDecode(_Shoal):
    alpha_ms: float = Field(ge=0)
    beta_ms: float = Field(ge=0)


class _YPrefill(_Shoal):
    gamma_ms: float = Field(ge=0)
    delta_ms: float = Field(ge=0)


class _YIteration(_Shoal):
    alpha_ms: float = Field(ge=0)
    beta_ms: float = Field(ge=0)
    gamma_ms: float = Field(ge=0)


class _YModel(_Shoal):
    name: str = Field(min_length=1)
    accelerator: str = Field(min_length=1)
    accelerators_per_replica: int = Field(1, ge=1)
    max_batch_size: int | None = Field(None, ge=1)
    at_tokens: int | None = Field(None, ge=1)
    decode: _YDecode | None = None
    prefill: _YPrefill | None = None
    iteration: _YIteration | None = None
    batch_latency_ms: dict[int, float] | None = None
    profile: str | None = Field(None, description="a shoal profile JSON, relative to this file")
    profile_percentile: Literal["p50", "p95", "p99", "mean"] = "mean"

    @model_validator(mode="after")
    def _one_source(self) -> "_YModel":
        sources = [name for name in ("decode", "iteration", "batch_latency_ms", "profile") if getattr(self, name) is not None]
        if (self.decode is None) != (self.prefill is None):
            raise ValueError("decode and prefill (G1) go together: give both")
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of decode+prefill (G1), iteration (G2), batch_latency_ms or profile"
                + (f", not {' and '.join(sources)}" if sources else "")
            )
        if self.batch_latency_ms is not None:
            bad = [k for k, v in self.batch_latency_ms.items() if k < 1 or not v > 0]
            if bad or not self.batch_latency_ms:
                raise ValueError("batch_latency_ms maps batch sizes >= 1 to latencies > 0 ms")
        if self.max_batch_size is None and (self.decode is not None or self.iteration is not None):
            raise ValueError("max_batch_size is required for token models (decode+prefill or iteration)")
        return self

    def to_perf(self, base: Path) -> ModelPerf:
        params: Any
        if self.decode is not None and self.prefill is not None:
            params = DecodePrefillParams(self.decode.alpha_ms, self.decode.beta_ms,
                                         self.prefill.gamma_ms, self.prefill.delta_ms)
        elif self.iteration is not None:
            params = IterationParams(self.iteration.alpha_ms, self.iteration.beta_ms, self.iteration.gamma_ms)
        else:
            table = self.batch_latency_ms
            if table is None:
                path = base / str(self.profile)
                table = load_json(Profile, path).monotone_latency_ms(self.profile_percentile)
                # As an inline table's: a latency of 0 (or not a number) cannot size a server.
                bad = sorted(batch for batch, latency_ms in table.items() if not (math.isfinite(latency_ms) and latency_ms > 0))
                if bad:
                    raise InvalidInputError(f"{path}: the {self.profile_percentile} latency of batch {bad[0]} must be > 0 ms")
            params = BatchLatencyTable(tuple(sorted((int(k), float(v)) for k, v in table.items())))
        top = self.max_batch_size or (max(k for k, _ in params.latency_ms_by_batch)
                                      if isinstance(params, BatchLatencyTable) else 1)
        return ModelPerf(model=self.name, accelerator=self.accelerator, max_batch_size=top, params=params,
                         accelerators_per_replica=self.accelerators_per_replica, at_tokens=self.at_tokens)


class _YTarget(_Shoal):
    model: str = Field(min_length=1)
    itl_ms: float | None = Field(None, ge=0)
    ttft_ms: float | None = Field(None, ge=0)
    latency_ms: float | None = Field(None, ge=0)
    tokens_per_s: float | None = Field(None, ge=0)


class _YServiceClass(_Shoal):
    name: str = Field(min_length=1)
    priority: int = Field(0, ge=0)
    targets: list[_YTarget] = []


class _YServer(_Shoal):
    name: str = Field(min_length=1)
    service_class: str = Field(min_length=1)
    model: str = Field(min_length=1)
    arrival_rate_rps: float = Field(ge=0)
    avg_in_tokens: float = Field(0, ge=0)
    avg_out_tokens: float = Field(0, ge=0)
    max_batch_size: int | None = Field(None, ge=1)
    max_queue_size: int | None = Field(None, ge=0)
    min_replicas: int = Field(0, ge=0)


class _YOptimizer(_Shoal):
    unlimited: bool = False
    solver: Literal["greedy", "milp"] = "greedy"
    saturation_policy: Literal["None", "PriorityExhaustive", "RoundRobin", "PriorityRoundRobin"] = "None"
    delayed_best_effort: bool = False
    max_queue_to_batch_ratio: int = Field(10, ge=0)


class ShoalCapacityFile(_Shoal):
    accelerators: list[_YAccelerator]
    capacity: dict[str, int] = {}
    models: list[_YModel]
    service_classes: list[_YServiceClass]
    servers: list[_YServer]
    optimizer: _YOptimizer = _YOptimizer()

    def to_system(self, base: Path) -> CapacitySystem:
        options = self.optimizer
        return CapacitySystem(
            accelerators=tuple(AcceleratorSpec(a.name, a.type, a.cost_cents_per_hour, a.multiplicity)
                               for a in self.accelerators),
            models=tuple(m.to_perf(base) for m in self.models),
            service_classes=tuple(
                ServiceClass(c.name, c.priority, tuple(
                    ModelTarget(t.model, itl_ms=t.itl_ms, ttft_ms=t.ttft_ms, tokens_per_s=t.tokens_per_s,
                                latency_ms=t.latency_ms) for t in c.targets))
                for c in self.service_classes
            ),
            servers=tuple(
                ServerSpec(name=s.name, service_class=s.service_class, model=s.model,
                           load=ServerLoad(s.arrival_rate_rps, s.avg_in_tokens, s.avg_out_tokens),
                           max_batch_size=s.max_batch_size, max_queue_size=s.max_queue_size,
                           min_replicas=s.min_replicas)
                for s in self.servers
            ),
            capacity_by_type=dict(self.capacity),
            options=OptimizerOptions(unlimited=options.unlimited, saturation_policy=options.saturation_policy,
                                     delayed_best_effort=options.delayed_best_effort, solver=options.solver,
                                     max_queue_to_batch_ratio=options.max_queue_to_batch_ratio),
        )
