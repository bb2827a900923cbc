"""`shoal bench serve`: shoal against Ray Serve, a lean server and bare ONNX Runtime.

Four systems serve the same ONNX variant under the same SLO, each in its own processes on
127.0.0.1, each with the same CPU budget (ONNX Runtime with `ort_threads` intra-op threads,
max batch `max_batch_size`), and one load generator (`shoal.client.loadgen`, its own process)
drives them with byte-identical requests:

* shoal: `python -m shoal serve --workers 2 --threads 1 --burst-threads 2 --max-batch-size B`
  by default (frontend process plus one single-threaded worker per ONNX Runtime thread, bursting
  to all of them while the others are idle; `--shoal-workers` changes it; the variant addressed
  by name, so the policy does not matter);
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

Also measured (`bare_onnxruntime.measure_tensor_transport`): moving a batch to a worker process
through shared memory plus a small JSON control message (what shoal's worker does) against
pickling the array over a multiprocessing Pipe, round trip per batch. The servers under test and
the probes between points are in `bench_servers`, the files and the summary in
`serve_bench_report`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.client.loadgen import LoadGenerator, LoadSpec, summarise
from shoal.core.errors import InvalidInputError
from shoal.experiments.bare_onnxruntime import Batch1Reference, measure_ceiling, measure_tensor_transport
from shoal.experiments.bench_servers import ServerUnderTest, wait_idle, wait_ready
from shoal.experiments.server_process import free_port
from shoal.zoo.repository import ModelRepository

__all__ = [
    "SYSTEMS",
    "BenchConfig",
    "BenchTarget",
    "run_serve_bench",
    "select_targets",
]

SYSTEMS = ("shoal", "lean_http", "ray_serve", "onnxruntime")
SERVERS = ("shoal", "lean_http", "ray_serve")
RAY_SERVE_MODULES = ("ray", "fastapi")
"""What the Ray Serve baseline imports beyond shoal's own dependencies: plain `ray` (the `ray`
and `test` extras) lacks Ray Serve's HTTP stack, and `from ray import serve` fails without it."""
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


def _point(generator: LoadGenerator, server: ServerUnderTest, spec: LoadSpec, kind: str) -> dict[str, Any]:
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
        # and one still working off the backlog of its last point would take the other's CPU
        # (a precaution: on the light variant, shoal's 2x point read the same with it and without).
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
        point = yield from measure(max(0.1, round(fraction * anchor_rps, 1)))  # a slow model's first rungs round to 0
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


def _execute(request: _Request, server: ServerUnderTest, generator: LoadGenerator, reference: Batch1Reference | None) -> Any:
    action, spec, extra = request
    if action == "reference":
        return reference.p50_ms(extra) if reference is not None else None
    if action == "warmup":
        generator.run(spec)
        return None
    if action == "point":
        return _point(generator, server, spec, extra)
    if action == "idle":
        return wait_idle(spec, *extra)
    raise ValueError(f"unknown sweep request {action!r}")


def _run_server_group(systems: list[str], target: BenchTarget, config: BenchConfig, generator: LoadGenerator,
                      ceiling: dict[str, Any] | None, reference: Batch1Reference | None, steps: _Steps,
                      scratch: Path) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Start the servers of a group together, interleave their sweeps request by request, stop
    them all (also on errors and Ctrl-C). A failing system becomes {"goodput_rps": None, "error"}."""
    results: dict[str, dict[str, Any]] = {}
    servers: dict[str, ServerUnderTest] = {}
    try:
        for system in systems:
            missing = [module for module in RAY_SERVE_MODULES if importlib.util.find_spec(module) is None] if system == "ray_serve" else []
            if missing:
                results[system] = {"goodput_rps": None, "error": f"Ray Serve is not installed here ({', '.join(missing)} missing): pip install 'ray[serve]' (the `bench` extra, which `make install` installs)"}
                continue
            port = free_port()
            server = ServerUnderTest(system, _server_argv(system, target, config, port, scratch), scratch / f"{target.role}-{system}.log", f"http://127.0.0.1:{port}")
            servers[system] = server
            server.start()
        started = time.monotonic()
        plans: dict[str, Generator[_Request, Any, dict[str, Any]]] = {}
        startup_s: dict[str, float] = {}
        for system, server in servers.items():
            ready_spec = LoadSpec(url=server.url, model=target.key, input_name=target.input_name, input_shape=target.input_shape,
                                  slo_ms=max(config.slo_ms, 10_000.0), duration_s=1.0, mode="closed", concurrency=1)  # fmt: skip
            try:
                wait_ready(server, ready_spec, max(1.0, config.startup_timeout_s - (time.monotonic() - started)))
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
                    # A point and the idle check after it are one step: the other system's next
                    # point waits until this one has worked off its backlog (interleaved, the
                    # other system measured first and this one idled after).
                    while requests[system][0] == "idle":
                        requests[system] = plans[system].send(_execute(requests[system], servers[system], generator, reference))
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
        # An overload point that ran and answered nothing has no p99 to compare: it missed.
        "p99 at 2x overload <= SLO": check(overload_p99, lambda v: v <= slo_ms) if overload_p99 is not None
        else (False if shoal.get("overload_goodput_rps") is not None else None),
    }
    return ratios


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
