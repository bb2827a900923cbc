"""A cheap load generator for KServe v2 HTTP endpoints: open-loop Poisson and closed-loop.

Why it is built this way:

* Serving benchmarks on a small machine are bounded by the client as often as by the server:
  httpx could not drive more than ~500 req/s from one core here, aiohttp on uvloop ~4000, and
  even aiohttp took ~0.25 ms of CPU per 196 KB request from the cores the server needed. So the
  generator writes one prebuilt request (Triton's binary tensor extension, so neither side
  formats floats as text, with binary outputs asked for) on keep-alive connections and parses
  replies with httptools in callbacks (`shoal.client.keepalive_pool`), on uvloop.
* It shares the machine with the server under test, so it measures its own CPU time
  (`time.process_time`, `resource.getrusage`) and its send lag, and runs in its own process
  (`LoadGenerator`), never on the server's event loop.
* Open loop means the schedule does not wait for answers (a slow server cannot slow the
  offered load down), and latency is measured from the *scheduled* send time, so queueing
  inside the client counts against the server rather than vanishing (coordinated omission).
  A request the generator cannot even send because `max_in_flight` requests are outstanding
  is recorded as STATUS_BACKLOG, not silently skipped.
* Every scheduled request ends as exactly one record: an HTTP status, a client-side failure,
  or STATUS_TIMEOUT when it is still unanswered `drain_timeout_s` after the window closed.
  So `num_requests == num_ok + num_shed + num_dropped + num_http_errors + num_client_errors`.

Statistics (`summarise`) are pure functions of the records, so they are tested on synthetic
records with exact numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from shoal.client.keepalive_pool import KeepAlivePool, build_post_request

__all__ = [
    "STATUS_BACKLOG",
    "STATUS_CLIENT_ERROR",
    "STATUS_TIMEOUT",
    "LoadGenerator",
    "LoadRun",
    "LoadSpec",
    "LoadStats",
    "build_infer_body",
    "input_bytes",
    "generate_load",
    "poisson_schedule",
    "summarise",
]

STATUS_CLIENT_ERROR = 0
"""The connection failed or the reply could not be read (no HTTP status)."""
STATUS_BACKLOG = -1
"""Not sent: `max_in_flight` requests were already outstanding when it was due."""
STATUS_TIMEOUT = -2
"""Sent, but unanswered `drain_timeout_s` after the measurement window closed."""

HEADER_LENGTH = "Inference-Header-Content-Length"
CLOSED_LOOP_ERROR_PAUSE_S = 0.01
"""How long a closed-loop client waits after a request that got no answer (a refused or broken
connection) before its next one."""


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


# -- the wire format --------------------------------------------------------------------------


def input_bytes(spec: LoadSpec) -> bytes:
    """The input tensor every request of `spec` carries (the same bytes each time, from its seed)."""
    rng = np.random.default_rng(spec.seed)
    if spec.datatype == "UINT8":
        return rng.integers(0, 256, size=spec.input_shape, dtype=np.uint8).tobytes()
    return rng.random(spec.input_shape, dtype=np.float32).tobytes()


def build_infer_body(spec: LoadSpec) -> tuple[bytes, dict[str, str]]:
    """One KServe v2 request with the tensor in Triton's binary section (or named by its
    shared-memory region), and its headers.

    The same bytes are sent every time: the generator must not spend CPU making inputs, and
    every system under test then sees identical requests. `slo_ms` rides in the parameters.
    """
    data = input_bytes(spec)
    if spec.shared_memory_region is not None:
        where = {"shared_memory_region": spec.shared_memory_region, "shared_memory_byte_size": len(data)}
    else:
        where = {"binary_data_size": len(data)}
    header = {
        "inputs": [{"name": spec.input_name, "shape": list(spec.input_shape), "datatype": spec.datatype, "parameters": where}],
        "parameters": {"slo_ms": spec.slo_ms, "binary_data_output": True},
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    if spec.shared_memory_region is not None:
        return header_bytes, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header_bytes))}
    return header_bytes + data, headers


def _reply_parameters(payload: bytes, header_length: str | None) -> dict[str, Any]:
    try:
        head = payload[: int(header_length)] if header_length else payload
        parameters = json.loads(head).get("parameters") or {}
        return parameters if isinstance(parameters, dict) else {}
    except (ValueError, AttributeError):
        return {}


# -- running a load ---------------------------------------------------------------------------


class _Recorder:
    """Per-request records in plain lists (cheaper to append to than numpy arrays)."""

    def __init__(self) -> None:
        self.send_s: list[float] = []
        self.latency_ms: list[float] = []
        self.status: list[int | None] = []
        self.variant: list[int] = []
        self.batch: list[int] = []
        self.server_ms: list[float] = []
        self.start_lag_ms: list[float] = []
        self.variants: dict[str, int] = {}
        self.errors: dict[str, int] = {}  # client-side failures by exception type

    def add(self, send_s: float, status: int | None = None) -> int:
        self.send_s.append(send_s)
        self.latency_ms.append(math.nan)
        self.status.append(status)
        self.variant.append(-1)
        self.batch.append(0)
        self.server_ms.append(math.nan)
        self.start_lag_ms.append(math.nan)
        return len(self.status) - 1

    def finish(self, index: int, status: int, latency_ms: float, parameters: dict[str, Any] | None) -> None:
        self.status[index] = status
        self.latency_ms[index] = latency_ms
        if parameters:
            name = parameters.get("shoal_variant")
            if isinstance(name, str):
                self.variant[index] = self.variants.setdefault(name, len(self.variants))
            size = parameters.get("shoal_batch_size", parameters.get("batch_size"))
            if isinstance(size, int):
                self.batch[index] = size
            server_ms = parameters.get("shoal_server_ms")
            if isinstance(server_ms, (int, float)):
                self.server_ms[index] = float(server_ms)


@contextlib.contextmanager
def _garbage_collector_paused() -> Iterator[None]:
    """No cyclic garbage collection during a measurement, and none left over from earlier ones.

    Why: a full collection stops the generator, and every request due meanwhile is sent late,
    counted late (latency runs from the intended send) and sent in a burst that slows the server
    for the requests after it. Measured at 15,000 req/s: a full collection of 16 ms in one of
    three 5 s runs (~240 requests due meanwhile), 11-14 ms for the one after each run with the
    collector off; in light-variant benches the client's p99 at 2x read 56.4 ms from the intended
    send against 38.0 ms from the actual one before this, 28.6 against 28.0 ms after it. With
    collection off, such a run left 2,000-5,000 objects in reference cycles (reference counting
    frees the rest)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def generate_load(spec: LoadSpec) -> LoadRun:
    """Run one measurement on the current event loop and return its records."""
    with _garbage_collector_paused():
        return await _generate_load(spec)


async def _generate_load(spec: LoadSpec) -> LoadRun:
    body, headers = build_infer_body(spec)
    host, port, request = build_post_request(spec.infer_url, body, headers)
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution, too coarse for
    # the ~1 ms latencies a fast server answers in.
    clock = time.perf_counter
    recorder = _Recorder()
    lags_ms: list[float] = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    pool = KeepAlivePool(host, port, request, max_connections=spec.max_in_flight, connect_timeout_s=max(1.0, spec.drain_timeout_s),
                         reply_header=HEADER_LENGTH)  # fmt: skip

    def send(index: int, intended: float, then: Callable[[], None] | None = None, then_after_error: Callable[[], None] | None = None) -> None:
        """Send request `index`; record its answer (and call `then`) when it comes; after a
        client error (no answer) `then_after_error`, if given, instead."""

        def on_reply(status: int, payload: bytes, header_length: str | None) -> None:
            latency_ms = (clock() - intended) * 1000.0
            parameters = _reply_parameters(payload, header_length) if status == 200 else None
            recorder.finish(index, status, latency_ms, parameters)
            if then is not None:
                then()

        def on_error(kind: str) -> None:
            recorder.finish(index, STATUS_CLIENT_ERROR, (clock() - intended) * 1000.0, None)
            recorder.errors[kind] = recorder.errors.get(kind, 0) + 1
            after = then_after_error or then
            if after is not None:
                after()

        recorder.start_lag_ms[index] = (clock() - intended) * 1000.0  # never early (see the open loop); signed to show it
        pool.send(on_reply, on_error)

    # The connections the first 20 ms of an open loop need (or one per closed-loop client),
    # opened before the window: a real client fleet is connected before it sends, and a burst of
    # connects at the first moments would be measured as the server's latency.
    wanted = spec.concurrency if spec.mode == "closed" else math.ceil(spec.rate_rps * 0.02)
    start = end = 0.0
    stopping = False
    try:
        await pool.open_connections(min(spec.max_in_flight, max(1, wanted)))
        start = clock() + 0.005
        end = start + spec.duration_s
        if spec.mode == "open":
            schedule = poisson_schedule(spec.rate_rps, spec.duration_s, spec.seed)
            for offset in schedule.tolist():
                intended = start + offset
                delay = intended - clock()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                # uvloop's timers count whole milliseconds, so a sleep can end ~1.4 ms early
                # (measured), and a delay under 0.5 ms is not slept at all: sending then would
                # run ahead of the Poisson schedule and time the answer from before its send.
                while clock() < intended:
                    await asyncio.sleep(0)
                lags_ms.append((clock() - intended) * 1000.0)
                if pool.in_flight >= spec.max_in_flight:
                    recorder.add(offset, STATUS_BACKLOG)
                    continue
                send(recorder.add(offset), intended)
        else:
            loop = asyncio.get_running_loop()

            def next_request() -> None:
                """A closed-loop client: its next request as soon as the last one is answered."""
                now = clock()
                # `stopping`, not only the clock: a timer may wake the drain below a little
                # before `end`, and nothing may be sent once the window is being drained.
                if now < end and not stopping:
                    # After a refused or broken connection, a pause: sent again at once, a client
                    # spun through ~7,000 failed requests a second on one core, and reported them
                    # as offered load.
                    send(recorder.add(max(0.0, now - start)), now, lambda: loop.call_soon(next_request),
                         lambda: loop.call_later(CLOSED_LOOP_ERROR_PAUSE_S, next_request))  # fmt: skip

            await asyncio.sleep(max(0.0, start - clock()))
            for _ in range(spec.concurrency):
                next_request()
        remaining = end - clock()
        if remaining > 0:
            await asyncio.sleep(remaining)
        stopping = True
        await pool.wait_all_done(spec.drain_timeout_s)  # what is still unanswered stays STATUS_TIMEOUT
    finally:
        await pool.close()
    wall_s = time.perf_counter() - wall_start
    cpu_s = time.process_time() - cpu_start
    status = np.array([STATUS_TIMEOUT if value is None else value for value in recorder.status], dtype=np.int32)
    return LoadRun(
        spec=spec,
        send_s=np.asarray(recorder.send_s, dtype=np.float64),
        latency_ms=np.asarray(recorder.latency_ms, dtype=np.float64),
        status=status,
        variant_index=np.asarray(recorder.variant, dtype=np.int32),
        batch_size=np.asarray(recorder.batch, dtype=np.int32),
        server_ms=np.asarray(recorder.server_ms, dtype=np.float64),
        start_lag_ms=np.asarray(recorder.start_lag_ms, dtype=np.float64),
        variants=sorted(recorder.variants, key=recorder.variants.__getitem__),
        wall_s=wall_s,
        cpu_s=cpu_s,
        max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        send_lag_p99_ms=float(np.percentile(lags_ms, 99)) if lags_ms else 0.0,
        client_errors=dict(recorder.errors),
        generator_nice=os.nice(0),
    )


# -- the generator's own process --------------------------------------------------------------


def _generator_main(connection: Any, priority_boost: bool) -> None:
    """Child process: run specs received on the pipe, one at a time, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the generator stops
    if priority_boost:
        # A real client runs on another machine; on a shared box, a higher priority keeps the
        # schedule honest when the server saturates every core. Needs privileges; else a no-op.
        try:
            os.nice(-5)
        except OSError:
            pass
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        while True:
            try:
                spec = connection.recv()
            except EOFError:
                return
            if spec is None:
                return
            try:
                connection.send(("ok", loop.run_until_complete(generate_load(spec))))
            except Exception as error:  # report to the parent; the generator stays usable
                connection.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        loop.close()


class LoadGenerator:
    """The load generator in a separate process, started once and reused for every run.

    A separate process keeps the generator's CPU measurable and off the server's event loop;
    reusing it avoids paying interpreter start-up for every point of a sweep.
    Results come back over a private pipe between two processes of this program.
    """

    def __init__(self, *, priority_boost: bool = False) -> None:
        self.priority_boost = priority_boost
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Any = None

    def start(self) -> "LoadGenerator":
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        self._process = context.Process(target=_generator_main, args=(child_end, self.priority_boost), name="shoal-loadgen", daemon=True)
        self._process.start()
        child_end.close()
        self._connection = parent_end
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def run(self, spec: LoadSpec) -> LoadRun:
        """Run one spec in the generator process; raises RuntimeError when it fails."""
        if self._process is None or not self._process.is_alive():
            raise RuntimeError("the load generator process is not running (call start() first)")
        self._connection.send(spec)
        # Window + drain + generous slack for start-up; a hung generator must not hang the bench.
        limit_s = spec.duration_s + spec.drain_timeout_s + 60.0
        if not self._connection.poll(limit_s):
            self.close()
            raise RuntimeError(f"the load generator did not finish a {spec.duration_s} s run within {limit_s:.0f} s")
        try:
            kind, value = self._connection.recv()
        except (EOFError, OSError):
            code = self._process.exitcode if self._process else None
            self.close()
            raise RuntimeError(f"the load generator process exited (code {code}) during a run") from None
        if kind != "ok":
            raise RuntimeError(f"the load generator failed: {value}")
        return value

    def close(self) -> None:
        if self._process is None:
            return
        try:
            self._connection.send(None)
        except (OSError, BrokenPipeError):
            pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._connection.close()
        self._process = None

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
