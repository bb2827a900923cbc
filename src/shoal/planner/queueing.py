"""Queueing model of a batching inference server (pure: no I/O, no clocks).

A server holds at most `max_batch_size` requests in service and `max_queue_size` more waiting;
arrivals are Poisson and a request's service takes an exponential time whose rate depends on
how many requests share the batch. That is a birth-death chain on 0..K (K = batch + queue),
an M/M/1/K queue with state-dependent service rate mu(n) = n / service_time_ms(n) for n below
the batch limit and mu(max_batch_size) above it.

Three service-time models plug into the chain:

- `DecodePrefillModel` (Inferno's G1 generation, `decodeParms`/`prefillParms`): prefill =
  gamma + delta * in_tokens * n, time per output token = alpha + beta * n.
- `IterationModel` (Inferno's G2 generation, `perfParms` alpha/beta/gamma): one iteration of the
  batch takes alpha + n * (beta * compute_tokens + gamma * memory_tokens).
- `BatchLatencyModel` (shoal's own profiles): the measured latency of a batch of n inputs.

`max_arrival_rate` finds, by bisection, the largest arrival rate per replica whose predicted
TTFT, ITL or request latency meets each target; `generation` on every model says which
performance-model generation produced a number, so results can be traced back to their data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from shoal.core.models import Profile

__all__ = [
    "Generation",
    "QueueMetrics",
    "ServerMetrics",
    "SloTargets",
    "RateSizing",
    "ServiceTimeModel",
    "DecodePrefillModel",
    "IterationModel",
    "BatchLatencyModel",
    "solve_queue",
    "analyze",
    "max_arrival_rate",
    "rate_range_rps",
    "RATE_RANGE_EPSILON",
    "TPS_SAFETY_FRACTION",
]

Generation = Literal["G1", "G2", "profile"]

# Inferno searches arrival rates in [mu(1) * eps, mu(N) * (1 - eps)]: above the top the queue is
# saturated, below the bottom the server is idle. Kept identical so results compare.
RATE_RANGE_EPSILON = 1e-3
# A throughput (tokens/s) target is met by running this fraction below the maximum rate.
TPS_SAFETY_FRACTION = 0.1
# Bisection steps: the bracket shrinks by 2**-60, far below float32, which is what Inferno used.
_BISECTION_STEPS = 60


@dataclass(frozen=True)
class QueueMetrics:
    """Steady state of the birth-death chain at one arrival rate (times in ms, rates in 1/s)."""

    arrival_rate_rps: float
    throughput_rps: float
    avg_num_in_system: float
    avg_num_in_service: float
    avg_response_time_ms: float
    avg_service_time_ms: float
    avg_wait_time_ms: float
    blocking_probability: float
    max_batch_size: int
    max_queue_size: int

    @property
    def utilization(self) -> float:
        """Average batch occupancy: requests in service / max batch size, in [0, 1]."""
        return min(max(self.avg_num_in_service / self.max_batch_size, 0.0), 1.0)


@dataclass(frozen=True)
class ServerMetrics:
    """Queue metrics plus what the service-time model makes of them (ms).

    `ttft_ms`, `itl_ms` and `prefill_ms` are None for models without tokens (DNN profiles);
    `latency_ms` is the average request response time (wait + service) for every model.
    """

    queue: QueueMetrics
    generation: Generation
    latency_ms: float
    ttft_ms: float | None = None
    itl_ms: float | None = None
    prefill_ms: float | None = None
    max_rate_rps: float = 0.0

    @property
    def throughput_rps(self) -> float:
        return self.queue.throughput_rps


@dataclass(frozen=True)
class SloTargets:
    """Targets on averages; None (or 0, as Inferno writes "no target") means no target."""

    ttft_ms: float | None = None
    itl_ms: float | None = None
    latency_ms: float | None = None
    tokens_per_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "itl_ms", "latency_ms", "tokens_per_s"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"SloTargets.{name} must be a finite number >= 0, got {value!r}")

    def active(self, name: str) -> float | None:
        value = getattr(self, name)
        return value if value else None


@dataclass(frozen=True)
class RateSizing:
    """Largest arrival rate per replica that meets every target.

    status "ok": `arrival_rate_rps` meets all targets and `metrics` are taken there;
    "infeasible": some target is missed even at the lowest rate searched (`missed` names it).
    `throughput_rps` is what one replica completes at that arrival rate (Inferno sizes replicas
    with it); the per-target rates are the limits each target alone would allow.
    """

    status: Literal["ok", "infeasible"]
    generation: Generation
    arrival_rate_rps: float = 0.0
    throughput_rps: float = 0.0
    rate_for_ttft_rps: float | None = None
    rate_for_itl_rps: float | None = None
    rate_for_latency_rps: float | None = None
    rate_for_tps_rps: float | None = None
    binding: str = ""
    missed: str = ""
    metrics: ServerMetrics | None = None


class ServiceTimeModel(Protocol):
    """How long a request takes when n requests share the batch, and what that means in tokens."""

    generation: Generation
    max_batch_size: int

    def service_time_ms(self, num_in_service: float) -> float:
        """Time one request spends in service when `num_in_service` requests share the batch."""

    def token_metrics(self, queue: QueueMetrics) -> tuple[float | None, float | None, float | None]:
        """(ttft_ms, itl_ms, prefill_ms) at a solved queue state; Nones for models without tokens."""


def _check_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{owner}.{name} must be a finite number > 0, got {value!r}")


def _check_non_negative(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class DecodePrefillModel:
    """Inferno G1: prefill = gamma + delta*in*n, per-token decode = alpha + beta*n (all ms).

    A request's service is one prefill and (out - 1) decode steps. The TTFT and ITL of a solved
    queue are taken at the effective concurrency: the batch size whose service time equals the
    average service time of the chain.
    """

    alpha_ms: float
    beta_ms: float
    gamma_ms: float
    delta_ms: float
    avg_in_tokens: float
    avg_out_tokens: float
    max_batch_size: int
    generation: Generation = field(default="G1", init=False)

    def __post_init__(self) -> None:
        _check_non_negative(
            "DecodePrefillModel", alpha_ms=self.alpha_ms, beta_ms=self.beta_ms,
            gamma_ms=self.gamma_ms, delta_ms=self.delta_ms, avg_in_tokens=self.avg_in_tokens,
        )
        _check_positive("DecodePrefillModel", avg_out_tokens=self.avg_out_tokens)
        if self.max_batch_size < 1:
            raise ValueError(f"DecodePrefillModel.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.service_time_ms(1) <= 0:
            raise ValueError("DecodePrefillModel: alpha/beta/gamma/delta give a zero service time; set alpha_ms > 0")

    def prefill_ms(self, n: float) -> float:
        return 0.0 if self.avg_in_tokens == 0 else self.gamma_ms + self.delta_ms * self.avg_in_tokens * n

    def decode_ms(self, n: float) -> float:
        return self.alpha_ms + self.beta_ms * n

    def service_time_ms(self, num_in_service: float) -> float:
        return self.prefill_ms(num_in_service) + (self.avg_out_tokens - 1) * self.decode_ms(num_in_service)

    def effective_concurrency(self, avg_service_time_ms: float) -> float:
        """The n, in [0, max batch], with service_time_ms(n) == avg_service_time_ms (it is linear in n)."""
        base = self.service_time_ms(0.0)
        slope = self.service_time_ms(1.0) - base
        n = (avg_service_time_ms - base) / slope if slope > 0 else float(self.max_batch_size)
        return min(max(n, 0.0), float(self.max_batch_size))

    def token_metrics(self, queue: QueueMetrics) -> tuple[float | None, float | None, float | None]:
        n = self.effective_concurrency(queue.avg_service_time_ms)
        prefill = self.prefill_ms(n)
        return queue.avg_wait_time_ms + prefill, self.decode_ms(n), prefill


@dataclass(frozen=True)
class IterationModel:
    """Inferno G2: an iteration of a batch of n takes alpha + n*(beta*compute + gamma*memory) ms.

    Per request, compute tokens = (in + out) / (out + 1) and memory tokens = in + out/2 (the
    queue-analysis v0.3.0 convention that its published examples were computed with). Prefill
    adds (beta + gamma)*in to one iteration; a decode step adds beta + gamma*(in + out/2).
    TTFT = wait + prefill + one decode step; ITL = (service - prefill) / out.
    """

    alpha_ms: float
    beta_ms: float
    gamma_ms: float
    avg_in_tokens: float
    avg_out_tokens: float
    max_batch_size: int
    generation: Generation = field(default="G2", init=False)

    def __post_init__(self) -> None:
        _check_non_negative(
            "IterationModel", alpha_ms=self.alpha_ms, beta_ms=self.beta_ms,
            gamma_ms=self.gamma_ms, avg_in_tokens=self.avg_in_tokens,
        )
        _check_positive("IterationModel", avg_out_tokens=self.avg_out_tokens)
        if self.max_batch_size < 1:
            raise ValueError(f"IterationModel.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.service_time_ms(1) <= 0:
            raise ValueError("IterationModel: alpha/beta/gamma give a zero service time; set alpha_ms > 0")

    @property
    def _memory_tokens(self) -> float:
        return self.avg_in_tokens + self.avg_out_tokens / 2

    def iteration_ms(self, n: float) -> float:
        compute_tokens = (self.avg_in_tokens + self.avg_out_tokens) / (self.avg_out_tokens + 1)
        return self.alpha_ms + n * (self.beta_ms * compute_tokens + self.gamma_ms * self._memory_tokens)

    def prefill_ms(self, n: float) -> float:
        if self.avg_in_tokens == 0:
            return 0.0
        return self.iteration_ms(n) + (self.beta_ms + self.gamma_ms) * self.avg_in_tokens

    def decode_ms(self, n: float) -> float:
        return self.iteration_ms(n) + self.beta_ms + self.gamma_ms * self._memory_tokens

    def service_time_ms(self, num_in_service: float) -> float:
        return self.prefill_ms(num_in_service) + self.avg_out_tokens * self.decode_ms(num_in_service)

    def token_metrics(self, queue: QueueMetrics) -> tuple[float | None, float | None, float | None]:
        prefill = self.prefill_ms(queue.avg_num_in_service)
        itl = (queue.avg_service_time_ms - prefill) / self.avg_out_tokens
        return queue.avg_wait_time_ms + prefill + itl, itl, prefill


@dataclass(frozen=True)
class BatchLatencyModel:
    """A DNN served in batches: `latency_ms_by_batch[n - 1]` is the latency of a batch of n.

    Built from a shoal profile with `from_profile`; measured sizes are made monotone and
    interpolated in between by `Profile.batch_latency_ms`.
    """

    latency_ms_by_batch: tuple[float, ...]
    generation: Generation = field(default="profile", init=False)

    def __post_init__(self) -> None:
        if not self.latency_ms_by_batch:
            raise ValueError("BatchLatencyModel.latency_ms_by_batch needs at least one batch size")
        for index, value in enumerate(self.latency_ms_by_batch):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"BatchLatencyModel.latency_ms_by_batch[{index}] (batch {index + 1}) must be > 0 ms, got {value!r}"
                )

    @property
    def max_batch_size(self) -> int:
        return len(self.latency_ms_by_batch)

    @classmethod
    def from_table(cls, latency_ms: dict[int, float], max_batch_size: int | None = None) -> "BatchLatencyModel":
        """From measured {batch size: ms}, made non-decreasing; linear in between, and beyond the
        largest size the last slope extended (as `Profile.batch_latency_ms` does)."""
        if not latency_ms or min(latency_ms) < 1:
            raise ValueError("a batch-latency table needs batch sizes >= 1")
        sizes = np.array(sorted(latency_ms), dtype=float)
        values = np.maximum.accumulate([float(latency_ms[int(size)]) for size in sizes])
        n = np.arange(1, (max_batch_size or int(sizes[-1])) + 1, dtype=float)
        result = np.interp(n, sizes, values)
        beyond = n > sizes[-1]
        if beyond.any():
            slope = (values[-1] / sizes[-1] if sizes.size == 1
                     else (values[-1] - values[-2]) / (sizes[-1] - sizes[-2]))
            result[beyond] = values[-1] + slope * (n[beyond] - sizes[-1])
        return cls(tuple(float(v) for v in result))

    @classmethod
    def from_profile(
        cls, profile: "Profile", *, percentile: Literal["p50", "p95", "p99", "mean"] = "mean",
        max_batch_size: int | None = None,
    ) -> "BatchLatencyModel":
        top = max_batch_size or max(profile.batch_sizes)
        return cls(tuple(profile.batch_latency_ms(n, percentile) for n in range(1, top + 1)))

    def service_time_ms(self, num_in_service: float) -> float:
        n = min(max(int(math.ceil(num_in_service)), 1), self.max_batch_size)
        return self.latency_ms_by_batch[n - 1]

    def token_metrics(self, queue: QueueMetrics) -> tuple[float | None, float | None, float | None]:
        return None, None, None


# --------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------


def _service_rates_per_ms(model: ServiceTimeModel) -> np.ndarray:
    n = np.arange(1, model.max_batch_size + 1, dtype=float)
    times = np.array([model.service_time_ms(float(k)) for k in n])
    return n / times


def rate_range_rps(model: ServiceTimeModel) -> tuple[float, float]:
    """Arrival rates searched: (mu(1) * eps, mu(max batch) * (1 - eps)) in requests/s."""
    rates = _service_rates_per_ms(model)
    return float(rates[0] * RATE_RANGE_EPSILON * 1000.0), float(rates[-1] * (1 - RATE_RANGE_EPSILON) * 1000.0)


class _Chain:
    """The birth-death chain of one model, prepared once and solved at many arrival rates."""

    def __init__(self, service_rates_per_ms: Sequence[float], max_queue_size: int) -> None:
        rates = np.asarray(service_rates_per_ms, dtype=float)
        if rates.ndim != 1 or rates.size == 0 or not np.all(np.isfinite(rates)) or np.any(rates <= 0):
            raise ValueError("service rates must be a non-empty sequence of finite numbers > 0")
        if max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {max_queue_size}")
        self.max_batch_size = int(rates.size)
        self.max_queue_size = int(max_queue_size)
        capacity = self.max_batch_size + self.max_queue_size
        states = np.arange(1, capacity + 1)
        per_state = rates[np.minimum(states, self.max_batch_size) - 1]
        self._log_rate_sums = np.concatenate(([0.0], np.cumsum(np.log(per_state))))
        self._n = np.arange(capacity + 1, dtype=float)
        self._in_service = np.minimum(self._n, self.max_batch_size)
        self._departure_rates_per_ms = np.concatenate(([0.0], per_state))  # by state; none from an empty system
        self.rates_per_ms = rates

    def solve(self, arrival_rate_per_ms: float) -> QueueMetrics:
        if not (arrival_rate_per_ms > 0 and math.isfinite(arrival_rate_per_ms)):
            raise ValueError(f"arrival rate must be a finite number > 0, got {arrival_rate_per_ms * 1000} rps")
        # p[n] ∝ lambda^n / prod(mu(1..n)), in logs so that long chains neither overflow nor vanish.
        log_p = self._n * math.log(arrival_rate_per_ms) - self._log_rate_sums
        log_p -= log_p.max()
        p = np.exp(log_p)
        p /= p.sum()
        num_in_system = float(self._n @ p)
        num_in_service = float(self._in_service @ p)
        blocking = float(p[-1])
        # What leaves, not lambda * (1 - blocking): equal by the balance equations, but the
        # difference cancels when blocking is near 1 (throughput 1.11 instead of 1 at 1e15 rps,
        # then a division by zero).
        throughput = float(self._departure_rates_per_ms @ p)
        response = num_in_system / throughput
        service = num_in_service / throughput
        return QueueMetrics(
            arrival_rate_rps=float(arrival_rate_per_ms * 1000.0),
            throughput_rps=float(throughput * 1000.0),
            avg_num_in_system=num_in_system,
            avg_num_in_service=num_in_service,
            avg_response_time_ms=float(response),
            avg_service_time_ms=float(service),
            avg_wait_time_ms=float(max(response - service, 0.0)),
            blocking_probability=blocking,
            max_batch_size=self.max_batch_size,
            max_queue_size=self.max_queue_size,
        )


def solve_queue(arrival_rate_rps: float, service_rates_rps: Sequence[float], max_queue_size: int) -> QueueMetrics:
    """Solve the chain whose service rate with n in service is service_rates_rps[n - 1] (1/s).

    `len(service_rates_rps)` is the max batch size; states above it keep the last rate.
    """
    chain = _Chain([rate / 1000.0 for rate in service_rates_rps], max_queue_size)
    return chain.solve(arrival_rate_rps / 1000.0)


def _metrics(model: ServiceTimeModel, chain: _Chain, arrival_rate_per_ms: float) -> ServerMetrics:
    queue = chain.solve(arrival_rate_per_ms)
    ttft, itl, prefill = model.token_metrics(queue)
    return ServerMetrics(
        queue=queue, generation=model.generation, latency_ms=queue.avg_response_time_ms,
        ttft_ms=ttft, itl_ms=itl, prefill_ms=prefill,
        max_rate_rps=float(chain.rates_per_ms[-1] * (1 - RATE_RANGE_EPSILON) * 1000.0),
    )


def analyze(model: ServiceTimeModel, arrival_rate_rps: float, *, max_queue_size: int) -> ServerMetrics:
    """Throughput, waiting, service and response times, TTFT and ITL of one replica at a rate."""
    chain = _Chain(_service_rates_per_ms(model), max_queue_size)
    return _metrics(model, chain, arrival_rate_rps / 1000.0)


def _largest_rate_meeting(evaluate, low: float, high: float, target: float) -> float | None:
    """Largest x in [low, high] with evaluate(x) <= target, for evaluate non-decreasing in x.

    None when even `low` misses the target. Within tolerance of the target counts as met, so
    that a target exactly equal to a flat metric (batch size 1) is not declared missed.
    """
    tolerance = 1e-9 * max(abs(target), 1.0)
    if evaluate(low) > target + tolerance:
        return None
    if evaluate(high) <= target + tolerance:
        return high
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if evaluate(middle) > target:
            high = middle
        else:
            low = middle
        if high - low <= 1e-15 * high:
            break
    return low


def max_arrival_rate(model: ServiceTimeModel, targets: SloTargets, *, max_queue_size: int) -> RateSizing:
    """The largest arrival rate per replica meeting every target, by bisection per target.

    A throughput target (tokens/s) is met, as in Inferno, by staying a safety fraction below
    the top of the rate range. With no target at all the top of the range is returned.
    """
    chain = _Chain(_service_rates_per_ms(model), max_queue_size)
    low = float(chain.rates_per_ms[0] * RATE_RANGE_EPSILON)
    high = float(chain.rates_per_ms[-1] * (1 - RATE_RANGE_EPSILON))

    def metric(name: str):
        def evaluate(rate_per_ms: float) -> float:
            value = getattr(_metrics(model, chain, rate_per_ms), name)
            if value is None:
                raise ValueError(f"a {model.generation} model has no {name}; drop that target")
            return value

        return evaluate

    limits: dict[str, float] = {}
    for name in ("ttft_ms", "itl_ms", "latency_ms"):
        target = targets.active(name)
        if target is None:
            continue
        found = _largest_rate_meeting(metric(name), low, high, target)
        if found is None:
            return RateSizing(status="infeasible", generation=model.generation, missed=name)
        limits[name] = found
    if targets.active("tokens_per_s") is not None:
        limits["tokens_per_s"] = high * (1 - TPS_SAFETY_FRACTION)
    binding = min(limits, key=lambda key: limits[key]) if limits else ""
    rate = limits[binding] if limits else high
    metrics = _metrics(model, chain, rate)

    def rps(key: str) -> float | None:
        return limits[key] * 1000.0 if key in limits else None

    return RateSizing(
        status="ok", generation=model.generation, arrival_rate_rps=rate * 1000.0,
        throughput_rps=metrics.throughput_rps, rate_for_ttft_rps=rps("ttft_ms"),
        rate_for_itl_rps=rps("itl_ms"), rate_for_latency_rps=rps("latency_ms"),
        rate_for_tps_rps=rps("tokens_per_s"), binding=binding, metrics=metrics,
    )
