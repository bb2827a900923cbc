"""One load measurement as data: what to send (`LoadSpec`), what came back (`LoadRun`, one
record per scheduled request) and what it means (`LoadStats`, from `summarise`).

Pure: no sockets, clocks or processes (those are `shoal.client.loadgen`'s), so the statistics
are tested on synthetic records with exact numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "STATUS_BACKLOG",
    "STATUS_CLIENT_ERROR",
    "STATUS_TIMEOUT",
    "LoadRun",
    "LoadSpec",
    "LoadStats",
    "poisson_schedule",
    "summarise",
]

STATUS_CLIENT_ERROR = 0
"""The connection failed or the reply could not be read (no HTTP status)."""
STATUS_BACKLOG = -1
"""Not sent: `max_in_flight` requests were already outstanding when it was due."""
STATUS_TIMEOUT = -2
"""Sent, but unanswered `drain_timeout_s` after the measurement window closed."""


@dataclass(frozen=True)
class LoadSpec:
    """One measurement: where to send, what, how much and for how long."""

    url: str
    """Base URL of the endpoint, e.g. http://127.0.0.1:8000 (requests go to /v2/models/<model>/infer)."""
    model: str
    input_name: str
    input_shape: tuple[int, ...]
    """Shape of the tensor of one request, batch axis included, e.g. (1, 3, 64, 64)."""
    slo_ms: float
    duration_s: float
    mode: Literal["open", "closed"] = "open"
    rate_rps: float = 0.0
    """Open loop: mean of the Poisson arrival rate."""
    concurrency: int = 0
    """Closed loop: requests kept in flight (each client sends the next one when answered)."""
    seed: int = 0
    max_in_flight: int = 1024
    drain_timeout_s: float = 2.0
    datatype: Literal["FP32", "UINT8"] = "FP32"
    shared_memory_region: str | None = None
    """Name the input by this registered region of the server (Triton's system shared-memory
    extension) instead of sending it; the region must hold `input_bytes(spec)`."""

    def __post_init__(self) -> None:
        if self.mode not in ("open", "closed"):
            raise ValueError(f"mode must be 'open' or 'closed', got {self.mode!r}")
        if self.mode == "open" and not self.rate_rps > 0:
            raise ValueError(f"rate_rps must be > 0 in open-loop mode, got {self.rate_rps}")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1 in closed-loop mode, got {self.concurrency}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if not self.slo_ms > 0:
            raise ValueError(f"slo_ms must be > 0, got {self.slo_ms}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")
        if len(self.input_shape) < 1 or any(dim < 1 for dim in self.input_shape):
            raise ValueError(f"input_shape must be positive dimensions, got {self.input_shape}")

    @property
    def infer_url(self) -> str:
        return f"{self.url.rstrip('/')}/v2/models/{self.model}/infer"


@dataclass
class LoadRun:
    """Raw records of one measurement, one entry per scheduled request (arrays of equal length)."""

    spec: LoadSpec
    send_s: np.ndarray
    """float64: intended send time, seconds from the start of the window."""
    latency_ms: np.ndarray
    """float64: from the intended send time to the last byte of the answer; NaN when none."""
    status: np.ndarray
    """int32: HTTP status, or STATUS_CLIENT_ERROR / STATUS_BACKLOG / STATUS_TIMEOUT."""
    variant_index: np.ndarray
    """int32: index into `variants` of the variant the server says served it; -1 unknown."""
    batch_size: np.ndarray
    """int32: batch size the server reports for it; 0 unknown."""
    server_ms: np.ndarray | None = None
    """float64: time the server says it spent on it (shoal's `shoal_server_ms`); NaN unknown.
    Client latency minus this is time outside the service: sockets, HTTP parsing, the client."""
    variants: list[str] = field(default_factory=list)
    start_lag_ms: np.ndarray | None = None
    """float64: how late the generator began sending each request (its own scheduling lag, before
    a byte left); NaN when never sent. Part of `latency_ms` that no server can shorten."""
    wall_s: float = 0.0
    """Window plus drain, as the generator's clock saw it."""
    cpu_s: float = 0.0
    """CPU time (user + system) the generator's process spent on this run."""
    max_rss_mb: float = 0.0
    send_lag_p99_ms: float = 0.0
    """How late the generator sent requests against its schedule (open loop; 0 when closed)."""
    client_errors: dict[str, int] = field(default_factory=dict)
    """STATUS_CLIENT_ERROR records by exception type, to tell a refused connection from a reset."""
    generator_nice: int = 0
    """Scheduling niceness of the generator's process during the run (negative: boosted)."""


@dataclass(frozen=True)
class LoadStats:
    """What a run means: rates per second of the window, fractions of requests, latency of answers."""

    mode: str
    duration_s: float
    slo_ms: float
    offered_rps: float
    num_requests: int
    num_ok: int
    num_within_slo: int
    num_shed: int
    num_dropped: int
    num_http_errors: int
    num_client_errors: int
    throughput_rps: float
    goodput_rps: float
    shed_rps: float
    drop_rps: float
    shed_fraction: float
    drop_fraction: float
    error_fraction: float
    late_fraction: float
    """Answered with 200 but after the SLO, as a fraction of all requests."""
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    mean_batch_size: float | None
    server_p50_ms: float | None
    """Of answered requests that carry a server-side time (shoal only)."""
    server_p99_ms: float | None
    p99_from_send_ms: float | None
    """p99 of answers timed from when the generator began sending, not from the schedule: the
    generator's lag before sending taken out (its event loop's delay in reading the answer is
    still in)."""
    variants: dict[str, int]
    generator_cpu_s: float
    generator_cpu_fraction: float
    """Generator CPU seconds per wall second (1.0 = one core busy)."""
    generator_send_lag_p99_ms: float
    client_errors: dict[str, int] = field(default_factory=dict)
    generator_nice: int = 0
    concurrency: int = 0
    rate_rps: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- schedule and statistics (pure) -----------------------------------------------------------


def poisson_schedule(rate_rps: float, duration_s: float, seed: int) -> np.ndarray:
    """Send times (s, ascending, in [0, duration_s)) of a Poisson process; same seed, same times."""
    if not rate_rps > 0 or not duration_s > 0:
        raise ValueError(f"rate_rps and duration_s must be > 0, got {rate_rps} and {duration_s}")
    rng = np.random.default_rng(seed)
    expected = rate_rps * duration_s
    chunk = int(expected + 6.0 * math.sqrt(expected) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate_rps, size=chunk))
    while times[-1] < duration_s:  # rare: draw more gaps until the window is covered
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate_rps, size=chunk))
        times = np.concatenate([times, more])
    return times[times < duration_s]


def _percentile(values: np.ndarray, q: float) -> float | None:
    return None if values.size == 0 else round(float(np.percentile(values, q)), 4)


def summarise(run: LoadRun) -> LoadStats:
    """Throughput, goodput (200 within SLO), shed (429), drop (504), errors and latency of answers."""
    spec = run.spec
    duration_s = spec.duration_s
    status = run.status
    ok = status == 200
    latencies = run.latency_ms[ok]
    within = int(np.count_nonzero(latencies <= spec.slo_ms))
    num_requests = int(status.size)
    num_ok = int(np.count_nonzero(ok))
    num_shed = int(np.count_nonzero(status == 429))
    num_dropped = int(np.count_nonzero(status == 504))
    num_client_errors = int(np.count_nonzero(status <= 0))
    num_http_errors = num_requests - num_ok - num_shed - num_dropped - num_client_errors
    fraction = (lambda count: round(count / num_requests, 6)) if num_requests else (lambda count: 0.0)
    counts: dict[str, int] = {}
    for index, name in enumerate(run.variants):
        count = int(np.count_nonzero(run.variant_index[ok] == index))
        if count:
            counts[name] = count
    batches = run.batch_size[ok]
    batches = batches[batches > 0]
    server_ms = run.server_ms[ok] if run.server_ms is not None else np.empty(0)
    server_ms = server_ms[~np.isnan(server_ms)]
    from_send_ms = latencies - run.start_lag_ms[ok] if run.start_lag_ms is not None else np.empty(0)
    from_send_ms = from_send_ms[~np.isnan(from_send_ms)]
    return LoadStats(
        mode=spec.mode,
        duration_s=duration_s,
        slo_ms=spec.slo_ms,
        offered_rps=round(num_requests / duration_s, 3),
        num_requests=num_requests,
        num_ok=num_ok,
        num_within_slo=within,
        num_shed=num_shed,
        num_dropped=num_dropped,
        num_http_errors=num_http_errors,
        num_client_errors=num_client_errors,
        throughput_rps=round(num_ok / duration_s, 3),
        goodput_rps=round(within / duration_s, 3),
        shed_rps=round(num_shed / duration_s, 3),
        drop_rps=round(num_dropped / duration_s, 3),
        shed_fraction=fraction(num_shed),
        drop_fraction=fraction(num_dropped),
        error_fraction=fraction(num_http_errors + num_client_errors),
        late_fraction=fraction(num_ok - within),
        p50_ms=_percentile(latencies, 50),
        p95_ms=_percentile(latencies, 95),
        p99_ms=_percentile(latencies, 99),
        mean_ms=None if latencies.size == 0 else round(float(latencies.mean()), 4),
        mean_batch_size=None if batches.size == 0 else round(float(batches.mean()), 3),
        server_p50_ms=_percentile(server_ms, 50),
        server_p99_ms=_percentile(server_ms, 99),
        p99_from_send_ms=_percentile(from_send_ms, 99),
        variants=counts,
        generator_cpu_s=round(run.cpu_s, 4),
        generator_cpu_fraction=round(run.cpu_s / run.wall_s, 4) if run.wall_s > 0 else 0.0,
        generator_send_lag_p99_ms=round(run.send_lag_p99_ms, 3),
        client_errors=dict(run.client_errors),
        generator_nice=run.generator_nice,
        concurrency=spec.concurrency if spec.mode == "closed" else 0,
        rate_rps=spec.rate_rps if spec.mode == "open" else 0.0,
    )
