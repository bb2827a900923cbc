"""`shoal bench serve`: shoal against Ray Serve, a lean server and bare ONNX Runtime.

Four systems serve the same ONNX variant under the same SLO, each in its own processes on
127.0.0.1, each with the same CPU budget (ONNX Runtime with `ort_threads` intra-op threads,
max batch `max_batch_size`), and one load generator (`shoal.client.loadgen`, its own process)
drives them with byte-identical requests:

* shoal: `python -m shoal serve --workers 1 --threads T --max-batch-size B` (frontend process
  plus one worker process; the variant addressed by name, so the policy does not matter);
* lean_http: `shoal.experiments.lean_server` (uvicorn + asyncio batcher, one process);
* ray_serve: `shoal.experiments.ray_serve_app` (`@serve.batch`, raised max_ongoing_requests);
* onnxruntime: batches from memory in this process, no server at all: the ceiling in img/s,
  and the batch-1 latency that "overhead" is measured against.

Per server the sweep is: warm-up; low load (closed loop, one request in flight: the p50 that
gives `overhead_p50_ms`); open-loop Poisson points on a geometric ladder of fractions of the
ceiling up past saturation, extended and refined around the best point (`_sweep_plan`); and a
final open-loop point at 2 x the peak goodput (the overload check: p99 of answered requests
should stay within the SLO). Peak goodput = the best goodput of the open-loop points. The
ladder adapts per system because their capacities differ by 10x; with the same seed the
arrival pattern is the same process scaled in time. shoal and lean_http are up at the same
time and their sweeps are interleaved request by request, so drift in the machine's background
load hits both alike; Ray Serve runs on its own (its daemons use CPU even when idle).

The machine is small and shared, so ratios come from one run, measured side by side, and
every point records the generator's and the server's CPU use next to its numbers.

Also measured (`measure_tensor_transport`): moving a batch to a worker process through shared
memory plus a small JSON control message (what shoal's worker does) against pickling the
array over a multiprocessing Pipe, round trip per batch.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.client.loadgen import LoadGenerator, LoadSpec, build_infer_body, summarise
from shoal.core.errors import InvalidInputError
from shoal.experiments.server_process import free_port
from shoal.zoo.repository import ModelRepository

__all__ = [
    "SYSTEMS",
    "BenchConfig",
    "BenchTarget",
    "measure_ceiling",
    "measure_tensor_transport",
    "run_serve_bench",
    "select_targets",
    "summary_text",
    "write_results",
]

SYSTEMS = ("shoal", "lean_http", "ray_serve", "onnxruntime")
SERVERS = ("shoal", "lean_http", "ray_serve")
_Request = tuple[str, LoadSpec | None, Any]
"""What a sweep asks the runner for: ("reference", None, seconds) | ("warmup", spec, None) |
("point", spec, kind) | ("idle", spec, (threshold ms, limit s))."""
ProgressCallback = Callable[[str, float, float], None]
"""(description, completed steps, total steps); the total may grow as sweeps extend."""


@dataclass(frozen=True)
class BenchConfig:
    """What to run; validated here so the CLI and tests get the same messages."""

    repository: Path
    model: str = "demo"
    """A family (its heaviest variant, and its lightest unless quick) or `<family>.<variant>`."""
    slo_ms: float = 50.0
    quick: bool = False
    systems: tuple[str, ...] = SYSTEMS
    max_batch_size: int = 32
    ort_threads: int = 2
    shoal_workers: int = 0
    """shoal's worker processes, sharing the `ort_threads` budget (each gets ort_threads // shoal_workers);
    0: one per thread, which with `shoal_burst` served most on the 2-core machine at no cost in
    low-load latency (README, "Burst threads")."""
    shoal_burst: bool = True
    """With several workers: a batch that runs while the others idle gets the whole budget (`shoal serve --burst-threads`)."""
    seed: int = 0
    point_duration_s: float | None = None
    """Length of each open-loop point; None: 1.5 s quick, 5 s otherwise."""
    include_light: bool | None = None
    """Also run the family's lightest variant; None: only when not quick."""
    startup_timeout_s: float = 180.0
    transport: bool = True
    """Run the shared-memory vs pickle micro-benchmark."""
    max_offered_rps: float = 4000.0
    """Top of the ladder, for models whose bare ceiling is far above what an HTTP frontend on one
    core takes (tens of thousands of images per second for the lightest demo variant); the sweep
    still goes past it when its 2x-overload point turns out to be the better one."""
    ladder: tuple[float, ...] | None = None
    """Coarse ladder as fractions of the ceiling; None: the default for quick or full mode."""

    def __post_init__(self) -> None:
        unknown = [name for name in self.systems if name not in SYSTEMS]
        if unknown or not self.systems:
            raise InvalidInputError(f"--systems must be a comma-separated subset of {','.join(SYSTEMS)}, got {','.join(self.systems) or 'nothing'}")
        if not self.slo_ms > 0:
            raise InvalidInputError(f"--slo-ms must be > 0, got {self.slo_ms}")
        if self.max_batch_size < 1:
            raise InvalidInputError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.ort_threads < 1:
            raise InvalidInputError(f"--threads must be >= 1, got {self.ort_threads}")
        if not 0 <= self.shoal_workers <= self.ort_threads or self.ort_threads % self.shoal_worker_count:
            raise InvalidInputError(
                f"--shoal-workers must divide --threads ({self.ort_threads}) so that shoal's workers share the same "
                f"thread budget as the other systems, got {self.shoal_workers}"
            )
        if self.ladder is not None and (not self.ladder or any(not 0 < f for f in self.ladder) or list(self.ladder) != sorted(self.ladder)):
            raise InvalidInputError(f"ladder must be ascending positive fractions of the ceiling, got {self.ladder}")
        if self.point_duration_s is not None and not self.point_duration_s > 0:
            raise InvalidInputError(f"point_duration_s must be > 0, got {self.point_duration_s}")

    @property
    def shoal_threads_per_worker(self) -> int:
        return self.ort_threads // self.shoal_worker_count

    @property
    def shoal_worker_count(self) -> int:
        return self.shoal_workers or self.ort_threads

    @property
    def duration_s(self) -> float:
        return self.point_duration_s or (1.5 if self.quick else 5.0)

    @property
    def sweep_fractions(self) -> tuple[float, ...]:
        """The coarse open-loop ladder, as fractions of the anchor rate (see `_sweep_plan`)."""
        if self.ladder:
            return self.ladder
        if self.quick:
            return (0.04, 0.1, 0.25, 0.5, 0.75, 1.0)
        return (0.02, 0.04, 0.06, 0.09, 0.12, 0.18, 0.25, 0.35, 0.5, 0.62, 0.75, 0.87, 1.0)

    @property
    def drain_timeout_s(self) -> float:
        # A request cancelled this long after the window is far past any sensible SLO.
        return max(1.0 if self.quick else 2.0, 4.0 * self.slo_ms / 1000.0)


@dataclass(frozen=True)
class BenchTarget:
    """One variant under test, with what every system needs to serve it."""

    role: str
    family: str
    variant: str
    model_path: Path
    input_name: str
    output_name: str
    input_channels: int
    input_size_px: int
    num_classes: int
    multiply_adds: int | None

    @property
    def key(self) -> str:
        return f"{self.family}.{self.variant}"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.input_channels, self.input_size_px, self.input_size_px)


def select_targets(repository: ModelRepository, model: str, *, include_light: bool) -> list[BenchTarget]:
    """`family` -> its heaviest variant (most multiply-adds) [+ lightest]; `family.variant` -> that one."""
    family_name, _, variant_name = model.partition(".")
    if not repository.has_family(family_name):
        known = ", ".join(repository.family_names()) or "none"
        raise InvalidInputError(
            f"--model {model!r}: family {family_name!r} is not in {repository.root} (families: {known}); "
            "run `shoal zoo build-demo` or pass --repo/--model"
        )
    family = repository.load_family(family_name)
    variants = repository.variants(family_name)
    if not variants:
        raise InvalidInputError(f"--model {model!r}: family {family_name!r} has no variants")

    def target(role: str, name: str) -> BenchTarget:
        variant = next((v for v in variants if v.name == name), None)
        if variant is None:
            raise InvalidInputError(f"--model {model!r}: variant {name!r} is not in family {family_name!r} ({', '.join(v.name for v in variants)})")
        return BenchTarget(
            role=role,
            family=family_name,
            variant=name,
            model_path=repository.model_path(family_name, name),
            input_name=family.input_name,
            output_name=family.output_name,
            input_channels=family.input_channels,
            input_size_px=variant.input_size_px,
            num_classes=family.num_classes,
            multiply_adds=variant.multiply_adds,
        )

    if variant_name:
        return [target("selected", variant_name)]
    cost = lambda v: (v.multiply_adds or 0, v.input_size_px)  # noqa: E731
    heavy = max(variants, key=cost)
    targets = [target("heavy", heavy.name)]
    light = min(variants, key=cost)
    if include_light and light.name != heavy.name:
        targets.append(target("light", light.name))
    return targets


# -- bare ONNX Runtime ------------------------------------------------------------------------


def measure_ceiling(target: BenchTarget, *, max_batch_size: int, threads: int, duration_s: float, seed: int = 0) -> dict[str, Any]:
    """Bare ORT in this process on tensors from memory: the best img/s (batch 1 or max), p50 at batch 1."""
    from shoal.core.models import Device
    from shoal.profiler.session import create_session

    session = create_session(target.model_path, Device.parse("cpu"), intra_op_threads=threads)
    rng = np.random.default_rng(seed)
    single = rng.random(target.input_shape, dtype=np.float32)
    full = rng.random((max_batch_size, *target.input_shape[1:]), dtype=np.float32)
    outputs = [target.output_name]
    for _ in range(5):
        session.run(outputs, {target.input_name: single})
        session.run(outputs, {target.input_name: full})
    samples_ms: list[float] = []
    begin = time.perf_counter()
    while time.perf_counter() - begin < duration_s / 2 or len(samples_ms) < 20:
        start = time.perf_counter()
        session.run(outputs, {target.input_name: single})
        samples_ms.append((time.perf_counter() - start) * 1000.0)
    single_per_s = len(samples_ms) / (time.perf_counter() - begin)
    batches, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < duration_s / 2 or batches < 3:
        session.run(outputs, {target.input_name: full})
        batches += 1
    elapsed_s = time.perf_counter() - begin
    batched_per_s = batches * max_batch_size / elapsed_s
    # The ceiling is the better of batch 1 and the max batch: for some models ORT is faster per
    # image unbatched (cache effects), and a ceiling must not be one a server can beat.
    images_per_s = max(batched_per_s, single_per_s)
    return {
        "goodput_rps": round(images_per_s, 1),
        "images_per_s": round(images_per_s, 1),
        "images_per_s_at_max_batch": round(batched_per_s, 1),
        "images_per_s_at_batch_1": round(single_per_s, 1),
        "batch_size": max_batch_size,
        "batch_ms": round(elapsed_s / batches * 1000.0, 4),
        "ms_per_image": round(1000.0 / images_per_s, 4),
        "batch1_p50_ms": round(statistics.median(samples_ms), 4),
        "batch1_samples": len(samples_ms),
        "threads": threads,
    }


class Batch1Reference:
    """Bare ORT batch-1 latency, re-measured right before each server's low-load point.

    Overhead is a difference of two small numbers taken on a shared machine; measuring the
    reference next to the measurement it is subtracted from keeps background drift out of it.
    """

    def __init__(self, target: BenchTarget, threads: int, seed: int = 0):
        from shoal.core.models import Device
        from shoal.profiler.session import create_session

        self.session = create_session(target.model_path, Device.parse("cpu"), intra_op_threads=threads)
        self.feed = {target.input_name: np.random.default_rng(seed).random(target.input_shape, dtype=np.float32)}
        self.outputs = [target.output_name]

    def p50_ms(self, duration_s: float) -> float:
        for _ in range(3):
            self.session.run(self.outputs, self.feed)
        samples_ms: list[float] = []
        begin = time.perf_counter()
        while time.perf_counter() - begin < duration_s or len(samples_ms) < 20:
            start = time.perf_counter()
            self.session.run(self.outputs, self.feed)
            samples_ms.append((time.perf_counter() - start) * 1000.0)
        return round(statistics.median(samples_ms), 4)


# -- servers in their own process groups ------------------------------------------------------


def _process_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, session id, CPU ticks user + system) of every live process, from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # Fields after "(comm)": state ppid pgrp session ... utime(11) stime(12).
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12]))
    return table


def _family_pids(root_pid: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """The root's session plus all its descendants: Ray starts some workers in sessions of their
    own, and a process whose parent died leaves the tree but stays in the session."""
    family = {pid for pid, (_, session, _) in table.items() if session == root_pid}
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        if pid in table:
            family.add(pid)
        stack.extend(child for child in children.get(pid, []) if child not in family)
    family.discard(os.getpid())
    return family


class ServerProcess:
    """A server under test, started in a session of its own so everything it spawns can be
    measured (CPU) and stopped: SIGTERM to the server, then SIGKILL, by pid, to whatever of its
    session and process tree is still alive a few seconds after."""

    def __init__(self, name: str, argv: list[str], log_path: Path, url: str):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.url = url
        self.process: subprocess.Popen | None = None
        self._log: Any = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server and everything it started that is still alive."""
        if self.process is None:
            return 0.0
        table = _process_table()
        return sum(table[pid][2] for pid in _family_pids(self.process.pid, table)) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, num_chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None:
            return
        root = self.process.pid
        table = _process_table()
        # Taken before the root exits and orphans them; with sessions, so a reused pid is spared.
        family = {pid: table[pid][1] for pid in _family_pids(root, table)}
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5.0
        while True:
            table = _process_table()
            still = {pid for pid, session in family.items() if pid in table and table[pid][1] == session}
            left = sorted(still | _family_pids(root, table))
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for pid in left:  # whatever ignored SIGTERM, or was orphaned by its parent's exit
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        if self._log:
            self._log.close()


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, connection: http.client.HTTPConnection | None = None) -> tuple[int, float]:
    """One blocking request; (status or 0 on failure, seconds)."""
    parsed = url.split("://", 1)[1]
    hostport, _, path = parsed.partition("/")
    conn = connection or http.client.HTTPConnection(hostport, timeout=timeout_s)
    begin = time.perf_counter()
    try:
        conn.request("POST", "/" + path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - begin
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0, time.perf_counter() - begin
    finally:
        if connection is None:
            conn.close()


def _wait_ready(server: ServerProcess, spec: LoadSpec, timeout_s: float) -> None:
    """Until a real inference request is answered 200 (the server, its model and its route)."""
    body, headers = build_infer_body(spec)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive:
            raise RuntimeError(f"{server.name} exited during start-up (code {server.process.returncode}):\n{server.log_tail()}")
        status, _ = _post(spec.infer_url, body, headers, timeout_s=10.0)
        if status == 200:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} was not answering within {timeout_s:.0f} s:\n{server.log_tail()}")


def _wait_idle(spec: LoadSpec, threshold_ms: float, limit_s: float) -> bool:
    """After an overloaded point: until a lone request is fast again (queues drained)."""
    body, headers = build_infer_body(spec)
    hostport = spec.url.split("://", 1)[1].split("/", 1)[0]
    connection = http.client.HTTPConnection(hostport, timeout=max(1.0, limit_s))
    deadline = time.monotonic() + limit_s
    fast = 0
    try:
        while time.monotonic() < deadline:
            status, elapsed_s = _post(spec.infer_url, body, headers, timeout_s=limit_s, connection=connection)
            fast = fast + 1 if status == 200 and elapsed_s * 1000.0 <= threshold_ms else 0
            if fast >= 3:
                return True
            if status != 200:
                time.sleep(0.05)
    finally:
        connection.close()
    return False


def _shoal_serve_options(config: BenchConfig) -> list[str]:
    """The `shoal serve` options that set shoal's share of the compute budget."""
    burst = ["--burst-threads", str(config.ort_threads)] if config.shoal_worker_count > 1 and config.shoal_burst else []
    return ["--workers", str(config.shoal_worker_count), "--threads", str(config.shoal_threads_per_worker), *burst,
            "--max-batch-size", str(config.max_batch_size)]  # fmt: skip


def _server_argv(system: str, target: BenchTarget, config: BenchConfig, port: int, scratch: Path) -> list[str]:
    python = sys.executable
    if system == "shoal":
        # ORT's threads split over shoal's workers (by default one per thread, bursting): the
        # same compute budget as the others, plus shoal's frontend process (which the lean
        # server and Ray's proxy also have, as threads or processes of their own).
        return [python, "-m", "shoal", "serve", "--repo", str(config.repository), "--http-port", str(port), "--grpc-port", "0",
                *_shoal_serve_options(config), "--preload", target.key]  # fmt: skip
    if system == "lean_http":
        return [python, "-m", "shoal.experiments.lean_server", "--model", str(target.model_path), "--model-name", target.key,
                "--port", str(port), "--max-batch-size", str(config.max_batch_size), "--threads", str(config.ort_threads)]  # fmt: skip
    if system == "ray_serve":
        return [python, "-m", "shoal.experiments.ray_serve_app", "--model", str(target.model_path), "--model-name", target.key,
                "--port", str(port), "--max-batch-size", str(config.max_batch_size), "--threads", str(config.ort_threads),
                "--num-cpus", str(os.cpu_count() or 2), "--temp-dir", str(scratch / "ray")]  # fmt: skip
    raise ValueError(f"unknown server system {system!r}")


# -- one system's sweep -----------------------------------------------------------------------


class _Steps:
    def __init__(self, callback: ProgressCallback | None, total: float):
        self.callback = callback
        self.total = total
        self.done = 0.0

    def advance(self, description: str, amount: float = 1.0) -> None:
        self.done += amount
        if self.callback:
            self.callback(description, self.done, max(self.total, self.done))

    def grow(self, amount: float) -> None:
        self.total += amount

    def finish(self, description: str) -> None:
        """Skipped steps (a system that failed to start) must not leave the bar short of the end."""
        self.advance(description, max(0.0, self.total - self.done))


def _point(generator: LoadGenerator, server: ServerProcess, spec: LoadSpec, kind: str) -> dict[str, Any]:
    cpu_before = server.cpu_s()
    run = generator.run(spec)
    stats = summarise(run).to_dict()
    stats["kind"] = kind
    stats["server_cpu_fraction"] = round((server.cpu_s() - cpu_before) / run.wall_s, 4) if run.wall_s > 0 else None
    return stats


def _keeping_up(point: dict[str, Any]) -> bool:
    return point["goodput_rps"] >= 0.9 * point["offered_rps"]


def _collapsed(point: dict[str, Any]) -> bool:
    return point["goodput_rps"] < 0.5 * point["offered_rps"]


def _sweep_plan(system: str, url: str, target: BenchTarget, config: BenchConfig, ceiling: dict[str, Any] | None,
                steps: _Steps) -> Generator[_Request, Any, dict[str, Any]]:  # fmt: skip
    """One system's sweep as a generator of requests (see `_execute`); returns its result.

    Written as a generator so that the runner can interleave two servers point by point: on a
    shared machine, drift in the background load then hits both alike.

    The open-loop rates: a coarse geometric ladder of fractions of the anchor (the bare-ORT
    ceiling, capped at what the generator can send), climbed until two points in a row have
    collapsed (under half the offered load answered within the SLO); extended upwards while the
    top point still keeps up and downwards while the bottom one is already late; refined with
    the geometric midpoints beside the best point; and finally 2x the peak goodput, the
    overload check. The ceiling is the anchor because every system's capacity is below it and
    a closed-loop probe misjudges heavy models (a batch of 32 can take longer than the SLO).
    """
    quick = config.quick
    base = dict(url=url, model=target.key, input_name=target.input_name, input_shape=target.input_shape,
                slo_ms=config.slo_ms, seed=config.seed, drain_timeout_s=config.drain_timeout_s)  # fmt: skip
    closed = lambda concurrency, duration_s: LoadSpec(mode="closed", concurrency=concurrency, duration_s=duration_s, **base)  # noqa: E731
    opened = lambda rate_rps: LoadSpec(mode="open", rate_rps=rate_rps, duration_s=config.duration_s, **base)  # noqa: E731
    label = f"{target.role} {target.variant}: {system}"

    short_s = min(1.0, config.duration_s) if quick else 4.0  # closed-loop points
    yield ("warmup", closed(4, min(0.3, short_s)), None)  # connections, allocator, caches
    reference_ms = yield ("reference", None, min(0.5, short_s))
    if ceiling and ceiling.get("batch1_p50_ms") is not None and reference_ms is not None:
        # The lower of this and the ceiling run's own batch-1 p50 (taken with no server up): a
        # reference slowed by the server's background work (shoal's controller loading the next
        # variant of the family on a spare worker read 2.15 ms against 1.14) would otherwise
        # make the overhead look smaller than it is. It can only make the overhead larger.
        reference_ms = min(reference_ms, ceiling["batch1_p50_ms"])
    low = yield ("point", closed(1, short_s), "low_load")
    low["ort_batch1_p50_ms"] = reference_ms
    steps.advance(f"{label} low load")
    idle_ms = max(3.0 * (low["p50_ms"] or config.slo_ms), (low["p50_ms"] or 0.0) + 10.0)
    idle_limit_s = 5.0 if quick else 15.0
    points: list[dict[str, Any]] = []

    def measure(rate_rps: float, kind: str = "sweep") -> Generator[_Request, Any, dict[str, Any]]:
        point = yield ("point", opened(rate_rps), kind)
        # After every point, the overload check included: the runner interleaves two servers,
        # and a server still working off the backlog of its last point takes the other one's
        # CPU (the lean server, after its 2x point, answered client-abandoned requests for ~2 s
        # of shoal's 2x point on the light variant).
        point["idle_after"] = yield ("idle", opened(1.0), (idle_ms, idle_limit_s))
        if kind == "sweep":
            points.append(point)
        steps.advance(f"{label} {rate_rps:.0f} req/s")
        return point

    def best() -> dict[str, Any]:
        return max(points, key=lambda p: p["goodput_rps"])

    anchor_rps = min(ceiling["images_per_s"] if ceiling else config.max_offered_rps, config.max_offered_rps)
    collapsed_in_a_row = 0
    for fraction in config.sweep_fractions:
        point = yield from measure(round(fraction * anchor_rps, 1))
        collapsed_in_a_row = collapsed_in_a_row + 1 if _collapsed(point) and point is not best() else 0
        if collapsed_in_a_row >= 2:
            steps.advance(f"{label} saturated", len(config.sweep_fractions) - len(points))
            break
    for _ in range(3):
        ordered = sorted(points, key=lambda p: p["rate_rps"])
        top = best()
        if top is ordered[-1] and _keeping_up(top) and top["rate_rps"] * 1.3 <= config.max_offered_rps:
            rate = top["rate_rps"] * 1.3  # still keeping up at the top: go further
        elif top is ordered[0] and not _keeping_up(top):
            rate = top["rate_rps"] * 0.5  # already late at the bottom: go lower
        else:
            break
        steps.grow(1)
        yield from measure(round(rate, 1))
    ordered = sorted(points, key=lambda p: p["rate_rps"])
    index = ordered.index(best())
    neighbours = [i for i in (index - 1, index + 1) if 0 <= i < len(ordered)]
    if quick and neighbours:  # one midpoint: towards the better neighbour
        neighbours = [max(neighbours, key=lambda i: ordered[i]["goodput_rps"])]
    for neighbour in neighbours:
        low_rps, high_rps = sorted((ordered[index]["rate_rps"], ordered[neighbour]["rate_rps"]))
        if high_rps > 1.15 * low_rps:
            steps.grow(1)
            yield from measure(round(math.sqrt(low_rps * high_rps), 1))
    peak = best()
    overload = None
    for attempt in range(3):  # 2x the peak; if that point is the better one, it joins the sweep
        if peak["goodput_rps"] <= 0:
            break
        steps.grow(1)
        rate = round(2.0 * peak["goodput_rps"], 1)
        overload = yield from measure(rate, "overload")
        if attempt == 2 or overload["goodput_rps"] <= 1.05 * peak["goodput_rps"]:
            break
        overload["kind"] = "sweep"
        points.append(overload)
        peak, overload = overload, None
    if overload is not None and overload["goodput_rps"] > peak["goodput_rps"]:
        peak = overload
    finished = [low, *sorted(points, key=lambda p: p["offered_rps"]), *([overload] if overload else [])]
    return {
        "goodput_rps": peak["goodput_rps"],
        "peak_offered_rps": peak["offered_rps"],
        "peak_p99_ms": peak["p99_ms"],
        "p50_low_load_ms": low["p50_ms"],
        "ort_batch1_p50_ms": reference_ms,
        "overhead_p50_ms": round(low["p50_ms"] - reference_ms, 4) if low["p50_ms"] is not None and reference_ms is not None else None,
        "low_load_throughput_rps": low["throughput_rps"],
        "overload_offered_rps": overload["offered_rps"] if overload else None,
        "overload_p99_ms": overload["p99_ms"] if overload else None,
        "overload_p99_from_send_ms": overload["p99_from_send_ms"] if overload else None,
        "overload_server_p99_ms": overload["server_p99_ms"] if overload else None,
        "overload_goodput_rps": overload["goodput_rps"] if overload else None,
        "overload_shed_fraction": overload["shed_fraction"] if overload else None,
        "overload_drop_fraction": overload["drop_fraction"] if overload else None,
        "overload_error_fraction": overload["error_fraction"] if overload else None,
        "generator_cpu_fraction_max": max(p["generator_cpu_fraction"] for p in finished),
        "points": finished,
    }


def _execute(request: _Request, server: ServerProcess, generator: LoadGenerator, reference: Batch1Reference | None) -> Any:
    action, spec, extra = request
    if action == "reference":
        return reference.p50_ms(extra) if reference is not None else None
    if action == "warmup":
        generator.run(spec)
        return None
    if action == "point":
        return _point(generator, server, spec, extra)
    if action == "idle":
        return _wait_idle(spec, *extra)
    raise ValueError(f"unknown sweep request {action!r}")


def _run_server_group(systems: list[str], target: BenchTarget, config: BenchConfig, generator: LoadGenerator,
                      ceiling: dict[str, Any] | None, reference: Batch1Reference | None, steps: _Steps,
                      scratch: Path) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Start the servers of a group together, interleave their sweeps request by request, stop
    them all (also on errors and Ctrl-C). A failing system becomes {"goodput_rps": None, "error"}."""
    results: dict[str, dict[str, Any]] = {}
    servers: dict[str, ServerProcess] = {}
    try:
        for system in systems:
            if system == "ray_serve" and importlib.util.find_spec("ray") is None:
                results[system] = {"goodput_rps": None, "error": "ray is not installed here: pip install 'ray[serve]' (the `bench` extra)"}
                continue
            port = free_port()
            server = ServerProcess(system, _server_argv(system, target, config, port, scratch), scratch / f"{target.role}-{system}.log", f"http://127.0.0.1:{port}")
            servers[system] = server
            server.start()
        started = time.monotonic()
        plans: dict[str, Generator[_Request, Any, dict[str, Any]]] = {}
        startup_s: dict[str, float] = {}
        for system, server in servers.items():
            ready_spec = LoadSpec(url=server.url, model=target.key, input_name=target.input_name, input_shape=target.input_shape,
                                  slo_ms=max(config.slo_ms, 10_000.0), duration_s=1.0, mode="closed", concurrency=1)  # fmt: skip
            try:
                _wait_ready(server, ready_spec, max(1.0, config.startup_timeout_s - (time.monotonic() - started)))
            except RuntimeError as error:
                results[system] = {"goodput_rps": None, "error": str(error).strip()[:3000]}
                server.stop()
                continue
            startup_s[system] = round(time.monotonic() - started, 2)
            steps.advance(f"{target.role} {target.variant}: {system} started")
            plans[system] = _sweep_plan(system, server.url, target, config, ceiling, steps)
        requests = {system: next(plan) for system, plan in plans.items()}
        while requests:
            for system in list(requests):
                try:
                    outcome = _execute(requests[system], servers[system], generator, reference)
                    requests[system] = plans[system].send(outcome)
                except StopIteration as finished:
                    results[system] = {**finished.value, "startup_s": startup_s[system]}
                    del requests[system]
                except (RuntimeError, OSError) as error:
                    plans[system].close()
                    del requests[system]
                    tail = servers[system].log_tail(800) if not servers[system].alive else ""
                    results[system] = {"goodput_rps": None, "error": f"{error}\n{tail}".strip()[:3000]}
    finally:
        for server in servers.values():
            server.stop()
    return results


def _bench_variant(target: BenchTarget, config: BenchConfig, generator: LoadGenerator, steps: _Steps, scratch: Path) -> dict[str, Any]:
    ceiling_s = min(1.2, 2 * config.duration_s) if config.quick else 4.0
    ceiling = measure_ceiling(target, max_batch_size=config.max_batch_size, threads=config.ort_threads, duration_s=ceiling_s, seed=config.seed)
    steps.advance(f"{target.role} {target.variant}: onnxruntime ceiling")
    # shoal and the lean server run side by side (both idle cheaply); Ray runs alone, because
    # its raylet, GCS and proxy use CPU even when idle and would slow the other two down.
    groups = [[s for s in ("shoal", "lean_http") if s in config.systems], [s for s in ("ray_serve",) if s in config.systems]]
    reference = Batch1Reference(target, config.ort_threads, config.seed)
    measured: dict[str, Any] = {}
    for group in groups:
        if group:
            measured.update(_run_server_group(group, target, config, generator, ceiling, reference, steps, scratch))
    systems: dict[str, Any] = {system: measured[system] for system in SERVERS if system in measured}
    # Measured again after the servers: the machine is shared, and a ceiling taken in a quiet
    # moment must not flatter or hurt one system. The higher of the two is the (stricter) ceiling.
    again = measure_ceiling(target, max_batch_size=config.max_batch_size, threads=config.ort_threads, duration_s=ceiling_s, seed=config.seed)
    steps.advance(f"{target.role} {target.variant}: onnxruntime ceiling again")
    # The stricter ceiling: the faster of the two. (Overhead uses the batch-1 latency measured
    # right before each server's low-load point, `Batch1Reference`.)
    best = ceiling if ceiling["images_per_s"] >= again["images_per_s"] else again
    onnxruntime = {**best, "images_per_s_before": ceiling["images_per_s"], "images_per_s_after": again["images_per_s"],
                   "batch1_p50_ms": min(ceiling["batch1_p50_ms"], again["batch1_p50_ms"]),
                   "batch1_p50_ms_before": ceiling["batch1_p50_ms"], "batch1_p50_ms_after": again["batch1_p50_ms"]}  # fmt: skip
    if "onnxruntime" in config.systems:
        systems["onnxruntime"] = onnxruntime
    return {
        "role": target.role,
        "model": target.key,
        "input_shape": list(target.input_shape),
        "multiply_adds": target.multiply_adds,
        "heavy_enough_for_ceiling_target": onnxruntime["ms_per_image"] >= 1.0,
        "ceiling": onnxruntime,
        "systems": systems,
        **_ratios(systems, onnxruntime, config.slo_ms),
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


def _ratios(systems: dict[str, Any], ceiling: dict[str, Any], slo_ms: float) -> dict[str, Any]:
    shoal = systems.get("shoal") or {}
    goodput = shoal.get("goodput_rps")
    ratios = {
        "ratio_vs_ray_serve": _ratio(goodput, (systems.get("ray_serve") or {}).get("goodput_rps")),
        "ratio_vs_lean": _ratio(goodput, (systems.get("lean_http") or {}).get("goodput_rps")),
        "ratio_vs_ceiling": _ratio(goodput, ceiling["images_per_s"]),
        "overhead_p50_ms": shoal.get("overhead_p50_ms"),
    }
    overload_p99 = shoal.get("overload_p99_ms")
    heavy = ceiling["ms_per_image"] >= 1.0
    check = lambda value, ok: None if value is None else bool(ok(value))  # noqa: E731
    ratios["targets"] = {
        "goodput_vs_ray_serve >= 5x": check(ratios["ratio_vs_ray_serve"], lambda v: v >= 5.0),
        "goodput_vs_lean >= 0.9x": check(ratios["ratio_vs_lean"], lambda v: v >= 0.9),
        "goodput_vs_ceiling >= 0.75 (heavy variant, >= 1 ms/image)": check(ratios["ratio_vs_ceiling"], lambda v: v >= 0.75) if heavy else None,
        "overhead_p50_ms <= 1.5": check(ratios["overhead_p50_ms"], lambda v: v <= 1.5),
        "p99 at 2x overload <= SLO": check(overload_p99, lambda v: v <= slo_ms),
    }
    return ratios


# -- shared memory vs pickle ------------------------------------------------------------------


def _transport_echo_main(connection: Any, memory_name: str, size_bytes: int, num_classes: int) -> None:
    """Child: answer each batch the way a worker would, through the worker's shared block or a pickle."""
    import pickle

    from shoal.runtime.batch_block import BatchBlock

    block = BatchBlock.attach(memory_name, size_bytes)
    try:
        while True:
            try:
                payload = connection.recv_bytes()
            except EOFError:
                return
            if payload.startswith(b"{"):
                message = json.loads(payload)
                if message.get("op") == "stop":
                    return
                shape = tuple(message["shape"])
                inputs = block.inputs(shape[0], shape[1:])
                outputs = np.zeros((shape[0], num_classes), dtype=np.float32)
                if shape[-1] >= num_classes:
                    outputs[...] = inputs[:, 0, 0, :num_classes]
                del inputs
                connection.send_bytes(json.dumps({"op": "done", "output_shape": block.write_outputs(outputs)}).encode())
            else:
                inputs = pickle.loads(payload)
                outputs = np.zeros((inputs.shape[0], num_classes), dtype=np.float32)
                if inputs.shape[-1] >= num_classes:
                    outputs[...] = inputs[:, 0, 0, :num_classes]
                connection.send(outputs)
    finally:
        block.release()


def measure_tensor_transport(item_shapes: dict[str, tuple[int, ...]], *, batch_sizes: tuple[int, ...] = (1, 32),
                             num_classes: int = 10, repeats: int = 60) -> list[dict[str, Any]]:  # fmt: skip
    """Round trip per batch to a spawned process: shared memory + JSON control vs pickle over a Pipe.

    Both start from a list of per-request arrays (what the batcher holds) and end with the
    outputs in the parent; shared memory copies items into the block and outputs out of it,
    pickle stacks the items and serialises them (copying the bytes through the pipe).
    """
    from shoal.runtime.batch_block import BatchBlock

    largest = max(int(np.prod(shape)) for shape in item_shapes.values()) * max(batch_sizes) * 4
    block = BatchBlock.create(2 * largest + 4096)
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=True)
    process = context.Process(target=_transport_echo_main, args=(child_end, block.name, block.size_bytes, num_classes), daemon=True)
    process.start()
    child_end.close()
    rows = []
    try:
        rng = np.random.default_rng(0)
        for name, item_shape in item_shapes.items():
            for batch_size in batch_sizes:
                items = [rng.random(item_shape, dtype=np.float32) for _ in range(batch_size)]

                def via_shared_memory() -> np.ndarray:
                    block.write_inputs(items)
                    parent_end.send_bytes(json.dumps({"op": "run", "shape": [batch_size, *item_shape]}).encode())
                    return block.read_outputs(json.loads(parent_end.recv_bytes())["output_shape"])

                def via_pickle() -> np.ndarray:
                    parent_end.send(np.stack(items))
                    return parent_end.recv()

                timings: dict[str, list[float]] = {"shared_memory": [], "pickle": []}
                for _ in range(3):  # warm both paths (page faults, buffers)
                    via_shared_memory()
                    via_pickle()
                for _ in range(repeats):  # interleaved, so noise from other jobs hits both alike
                    for method, action in (("shared_memory", via_shared_memory), ("pickle", via_pickle)):
                        begin = time.perf_counter()
                        action()
                        timings[method].append((time.perf_counter() - begin) * 1e6)
                shm_us, pickle_us = statistics.median(timings["shared_memory"]), statistics.median(timings["pickle"])
                rows.append({
                    "variant": name,
                    "item_shape": list(item_shape),
                    "batch_size": batch_size,
                    "batch_bytes": batch_size * int(np.prod(item_shape)) * 4,
                    "shared_memory_us_p50": round(shm_us, 1),
                    "pickle_us_p50": round(pickle_us, 1),
                    "pickle_over_shared_memory": round(pickle_us / shm_us, 3) if shm_us else None,
                    "repeats": repeats,
                })  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            parent_end.send_bytes(b'{"op": "stop"}')
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
        parent_end.close()
        block.release()
    return rows


# -- the whole benchmark ----------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),  # taskset
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["ray"] = version("ray")
    return info


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while the bench runs, so that the `finally` blocks stop
    every server it started (they live in sessions of their own and would outlive it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_serve_bench(config: BenchConfig, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Run every selected system on the selected variant(s); returns a JSON-able dict."""
    with _sigterm_as_interrupt():
        return _run_serve_bench(config, progress)


def _run_serve_bench(config: BenchConfig, progress: ProgressCallback | None) -> dict[str, Any]:
    repository = ModelRepository(config.repository)
    include_light = config.include_light if config.include_light is not None else not config.quick
    targets = select_targets(repository, config.model, include_light=include_light)
    servers = [s for s in SERVERS if s in config.systems]
    per_server = 2 + len(config.sweep_fractions)  # start, low load, ladder; the rest grows the total
    steps = _Steps(progress, len(targets) * (2 + per_server * len(servers)) + (1 if config.transport else 0))
    started = time.monotonic()
    machine_before = _machine()
    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sb-") as scratch, LoadGenerator(priority_boost=True) as generator:
        for target in targets:
            variants[target.role] = _bench_variant(target, config, generator, steps, Path(scratch))
    transport = None
    if config.transport:
        shapes = {target.key: target.input_shape[1:] for target in targets}
        transport = measure_tensor_transport(shapes, num_classes=targets[0].num_classes, repeats=20 if config.quick else 100)
    steps.finish("done")
    headline = variants[targets[0].role]
    systems = headline["systems"]
    out: dict[str, Any] = {
        "benchmark": "serve",
        "model": headline["model"],
        "slo_ms": config.slo_ms,
        "quick": config.quick,
    }
    for system in SYSTEMS:
        if system in config.systems:
            summary = {k: v for k, v in (systems.get(system) or {}).items() if k != "points"}
            out[system] = summary
    out.update({k: headline[k] for k in ("ratio_vs_ray_serve", "ratio_vs_lean", "ratio_vs_ceiling", "overhead_p50_ms", "targets")})
    out["config"] = {
        "repository": str(config.repository),
        "requested_model": config.model,
        "systems": list(config.systems),
        "max_batch_size": config.max_batch_size,
        "ort_threads": config.ort_threads,
        "point_duration_s": config.duration_s,
        "sweep_fractions_of_ceiling": list(config.sweep_fractions),
        "max_offered_rps": config.max_offered_rps,
        "drain_timeout_s": config.drain_timeout_s,
        "seed": config.seed,
        "shoal_workers": config.shoal_worker_count,
        "shoal_command": " ".join(["shoal serve", *_shoal_serve_options(config), "--preload <variant>"]),
    }
    out["machine"] = {**machine_before, "load_average_after": [round(value, 2) for value in os.getloadavg()],
                      "note": "a shared machine: compare ratios from one run, not absolute numbers across runs"}  # fmt: skip
    out["variants"] = variants
    out["transport"] = transport
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    return out


# -- files ------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "variant_role", "model", "system", "kind", "mode", "rate_rps", "concurrency", "offered_rps", "num_requests",
    "throughput_rps", "goodput_rps", "shed_fraction", "drop_fraction", "error_fraction", "late_fraction",
    "p50_ms", "p95_ms", "p99_ms", "p99_from_send_ms", "server_p50_ms", "server_p99_ms", "mean_batch_size", "generator_cpu_fraction",
    "server_cpu_fraction", "generator_send_lag_p99_ms",
)  # fmt: skip


def _csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for role, variant in results["variants"].items():
        for system, outcome in variant["systems"].items():
            if system == "onnxruntime":
                rows.append({"variant_role": role, "model": variant["model"], "system": system, "kind": "ceiling",
                             "throughput_rps": outcome["images_per_s"], "goodput_rps": outcome["images_per_s"],
                             "p50_ms": outcome["batch1_p50_ms"]})  # fmt: skip
                continue
            for point in outcome.get("points", []):
                rows.append({"variant_role": role, "model": variant["model"], "system": system,
                             **{column: point.get(column) for column in CSV_COLUMNS[3:]}})  # fmt: skip
    return rows


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    roles = list(results["variants"])
    figure, axes = plt.subplots(2, len(roles), figsize=(6.5 * len(roles), 8), squeeze=False)
    colours = {"shoal": "tab:blue", "lean_http": "tab:orange", "ray_serve": "tab:green", "onnxruntime": "black"}
    for column, role in enumerate(roles):
        variant = results["variants"][role]
        goodput_axis, p99_axis = axes[0][column], axes[1][column]
        best_goodput_rps = max((p["goodput_rps"] for name, o in variant["systems"].items() if name != "onnxruntime" for p in o.get("points", [])), default=0.0)
        for system, outcome in variant["systems"].items():
            if system == "onnxruntime":
                label = f"bare ORT ceiling ({outcome['images_per_s']:.0f} img/s)"
                if outcome["images_per_s"] <= 4 * best_goodput_rps or best_goodput_rps <= 0:
                    goodput_axis.axhline(outcome["images_per_s"], color="black", linestyle="--", label=label)
                else:  # a light model's ceiling is far above any server: drawn, it flattens every curve
                    goodput_axis.plot([], [], " ", label=f"{label}, off the scale")
                continue
            points = sorted((p for p in outcome.get("points", []) if p["mode"] == "open"), key=lambda p: p["offered_rps"])
            if not points:
                continue
            offered = [p["offered_rps"] for p in points]
            goodput_axis.plot(offered, [p["goodput_rps"] for p in points], marker="o", color=colours[system], label=system)
            p99 = [p["p99_ms"] if p["p99_ms"] is not None else math.nan for p in points]
            p99_axis.plot(offered, p99, marker="o", color=colours[system], label=system)
        goodput_axis.set_title(f"{variant['model']} ({role}): goodput at SLO {results['slo_ms']:.0f} ms")
        goodput_axis.set_xlabel("offered load (req/s)")
        goodput_axis.set_ylabel("goodput (answers within SLO per s)")
        goodput_axis.set_xscale("log")
        goodput_axis.legend(fontsize=8)
        p99_axis.axhline(results["slo_ms"], color="red", linestyle=":", label="SLO")
        p99_axis.set_title("p99 latency of answered requests")
        p99_axis.set_xlabel("offered load (req/s)")
        p99_axis.set_ylabel("p99 (ms)")
        p99_axis.set_xscale("log")
        p99_axis.set_yscale("log")
        p99_axis.legend(fontsize=8)
        for axis in (goodput_axis, p99_axis):
            axis.xaxis.set_major_formatter(ScalarFormatter())
            axis.xaxis.set_minor_formatter(NullFormatter())
        p99_axis.yaxis.set_major_formatter(ScalarFormatter())
        p99_axis.yaxis.set_minor_formatter(NullFormatter())
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """serve.json, serve.csv and serve.png in out_dir; returns their paths (also set as results["files"])."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "serve.json", "csv": out_dir / "serve.csv", "png": out_dir / "serve.png"}
    results["files"] = {kind: str(path) for kind, path in paths.items()}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_csv_rows(results))
    _plot(results, paths["png"])
    return {kind: str(path) for kind, path in paths.items()}


def summary_text(results: dict[str, Any]) -> str:
    """One screen: per variant and system, peak goodput, overhead and the overload check."""
    lines = [f"shoal bench serve: SLO {results['slo_ms']:.0f} ms, {results['elapsed_s']} s, load average {results['machine']['load_average']}"]
    for role, variant in results["variants"].items():
        ceiling = variant["ceiling"]
        lines.append(f"\n{variant['model']} ({role}): bare ORT {ceiling['images_per_s_at_max_batch']:.0f} img/s at batch {ceiling['batch_size']}, "
                     f"{ceiling['images_per_s_at_batch_1']:.0f} img/s and p50 {ceiling['batch1_p50_ms']:.3f} ms at batch 1")  # fmt: skip
        lines.append(f"  {'system':<12}{'goodput/s':>11}{'at req/s':>10}{'p50 low':>9}{'overhead':>10}{'2x p99':>9}{'shed':>7}{'drop':>7}{'gen cpu':>9}")
        for system, outcome in variant["systems"].items():
            if system == "onnxruntime":
                continue
            if outcome.get("goodput_rps") is None:
                lines.append(f"  {system:<12}  not measured: {outcome.get('error', '').splitlines()[0] if outcome.get('error') else 'no answers'}")
                continue
            fmt = lambda value, spec: format("-", ">" + spec.lstrip(">").split(".")[0]) if value is None else format(value, spec)  # noqa: E731
            lines.append(
                f"  {system:<12}{outcome['goodput_rps']:>11.0f}{outcome['peak_offered_rps']:>10.0f}{fmt(outcome['p50_low_load_ms'], '>9.2f')}"
                f"{fmt(outcome['overhead_p50_ms'], '>10.2f')}{fmt(outcome['overload_p99_ms'], '>9.1f')}"
                f"{fmt(outcome['overload_shed_fraction'], '>7.0%')}{fmt(outcome['overload_drop_fraction'], '>7.0%')}"
                f"{fmt(outcome['generator_cpu_fraction_max'], '>9.0%')}"
            )
        ratios = {k: variant[k] for k in ("ratio_vs_ray_serve", "ratio_vs_lean", "ratio_vs_ceiling", "overhead_p50_ms")}
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
        for name, met in variant["targets"].items():
            lines.append(f"  target {name}: {'n/a' if met is None else ('met' if met else 'MISSED')}")
    if results.get("transport"):
        lines.append("\nbatch to worker, round trip (µs p50): shared memory vs pickle")
        for row in results["transport"]:
            lines.append(f"  {row['variant']:<20} batch {row['batch_size']:>3}: {row['shared_memory_us_p50']:>8.0f} vs {row['pickle_us_p50']:>8.0f}"
                         f"  (pickle {row['pickle_over_shared_memory']}x)")  # fmt: skip
    return "\n".join(lines)
