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

The measurement's data (`LoadSpec`, `LoadRun`, `LoadStats`, `summarise`) lives in
`shoal.client.load_measurement`, pure and tested on synthetic records; it is re-exported here.
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
from typing import Any

import numpy as np

from shoal.client.keepalive_pool import KeepAlivePool, build_post_request
from shoal.client.load_measurement import (  # the measurement's data, part of this module's API
    STATUS_BACKLOG,
    STATUS_CLIENT_ERROR,
    STATUS_TIMEOUT,
    LoadRun,
    LoadSpec,
    LoadStats,
    poisson_schedule,
    summarise,
)

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

HEADER_LENGTH = "Inference-Header-Content-Length"
CLOSED_LOOP_ERROR_PAUSE_S = 0.01
"""How long a closed-loop client waits after a request that got no answer (a refused or broken
connection) before its next one."""


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
