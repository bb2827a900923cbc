"""The capacity control loop service: collect -> optimize -> actuate, over REST.

`shoal plan capacity --serve` runs this Starlette app under uvicorn:

- `POST /optimize`: body = an Inferno system (`{"system": {...}}` or its parts at top level)
  as JSON, or a shoal capacity document as YAML or JSON; `?solver=greedy|milp&unlimited=true`.
  Returns the solution JSON of `shoal plan capacity`; bad input is a 400 naming the field.
- `GET /invoke`: one cycle, now. Collect the runtime's Prometheus counters over HTTP, turn
  them into arrival rates since the previous sample, set them as the loads of the servers of
  the base system, plan, pass the plan through hysteresis, actuate, and return a report of
  what was collected, planned, decided (with the reason per server) and applied.
- `GET /report`: the last cycle's report. `GET /healthz`: liveness and counters.
- Every `interval_s` a background task runs the same cycle (cycles never overlap).

What to control comes from the control file (`--base-system`): the base system (shoal YAML
or Inferno JSON: accelerators, costs, performance, service classes, servers), which runtime
variant `<family>.<variant>` is which server, and the hysteresis settings; see
docs/capacity.md "Control loop". The decisions themselves are pure functions in
`shoal.planner.capacity_control`; the backends are in `shoal.runtime.capacity_actuators`; the
readers of the control file, request bodies and metrics in `shoal.runtime.capacity_inputs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shoal.core.errors import InvalidInputError
from shoal.formats.inferno import solution_json
from shoal.planner.capacity import SOLVERS, CapacityPlan, CapacitySystem, plan_capacity
from shoal.planner.capacity_control import (
    HysteresisState,
    MetricsSample,
    ObservedLoad,
    ReplicaContext,
    decide_replicas,
    desired_replicas,
    observed_load,
    system_with_load,
)
from shoal.runtime.capacity_actuators import (
    KubernetesActuator,
    ReplicaActuator,
    ReplicaChange,
    RuntimeReplicaActuator,
    load_apps_api,
)
from shoal.runtime.capacity_inputs import (
    CollectError,
    ControlSpec,
    load_control_file,
    parse_metrics,
    parse_system_body,
)
from shoal.runtime.errors import PayloadTooLargeError
from shoal.runtime.http_body import read_limited_body
from shoal.runtime.sockets import bind_http_socket, host_in_url

__all__ = [
    "CapacityLoop",
    "CollectError",
    "ControlSpec",
    "build_app",
    "load_control_file",
    "parse_metrics",
    "parse_system_body",
    "run_control_service",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _plan_summary(plan: CapacityPlan, spec: ControlSpec) -> dict[str, Any]:
    by_server = {allocation.server: allocation for allocation in plan.allocations}
    servers = {}
    for binding in spec.bindings:
        allocation = by_server[binding.server]
        servers[binding.server] = {
            "variant": binding.variant,
            "load_rps": _round(allocation.load.arrival_rate_rps),
            "status": allocation.status,
            "accelerator": allocation.accelerator,
            "numReplicas": allocation.num_replicas,
            "maxBatch": allocation.max_batch_size,
            "cost": _round(allocation.cost_cents_per_hour, 6),
            "latencyAverage": _round(allocation.latency_ms),
            **({"reason": allocation.reason} if allocation.reason else {}),
        }
    return {"solver": plan.solver, "status": plan.status, "total_cost": _round(plan.total_cost_cents_per_hour, 6),
            "servers": servers, **({"message": plan.message} if plan.message else {})}


class CapacityLoop:
    """State of the control loop between cycles: the last metrics sample, the hysteresis state
    and the accelerator each server got last time. Cycles are serialised by a lock."""

    def __init__(
        self,
        *,
        spec: ControlSpec | None = None,
        runtime_url: str | None = None,
        actuator: ReplicaActuator | None = None,
        solver: str | None = None,
        unlimited: bool | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_window_s: float = 1.0,
    ):
        if solver is not None and solver not in SOLVERS:
            raise InvalidInputError(f"--solver {solver!r} is unknown: use one of {', '.join(SOLVERS)}")
        self.spec = spec
        self.runtime_url = runtime_url.rstrip("/") if runtime_url else None
        self.actuator = actuator
        self.solver = solver
        self.unlimited = unlimited
        self.client = client or httpx.AsyncClient()
        self.clock = clock
        self.min_window_s = min_window_s
        self.hysteresis = HysteresisState()
        self.accelerators: dict[str, str] = {}
        self.last_sample: MetricsSample | None = None
        self.last_report: dict[str, Any] | None = None
        self.num_cycles = 0
        self.num_failed_cycles = 0
        self._lock = asyncio.Lock()

    @property
    def why_not_invocable(self) -> str | None:
        if self.spec is None:
            return "no control file: start with --base-system FILE and --runtime-url URL to run cycles"
        if self.runtime_url is None:
            return "no runtime to collect from: start with --runtime-url URL"
        if self.actuator is None:
            return "no actuator configured"
        return None

    # -- collect ---------------------------------------------------------------------------------
    async def collect(self) -> MetricsSample:
        url = f"{self.runtime_url}/metrics"
        try:
            response = await self.client.get(url, timeout=10.0)
        except httpx.HTTPError as error:
            raise CollectError(f"GET {url} failed: {error!r}") from None
        if response.status_code != 200:
            raise CollectError(f"GET {url}: HTTP {response.status_code}")
        return parse_metrics(response.text, self.clock())

    async def take_baseline(self) -> None:
        """The first sample, so that the first cycle measures from here; failures are ignored."""
        with contextlib.suppress(CollectError):
            self.last_sample = await self.collect()

    # -- one cycle -------------------------------------------------------------------------------
    async def cycle(self) -> dict[str, Any]:
        async with self._lock:
            started = time.perf_counter()
            report: dict[str, Any] = {"cycle": self.num_cycles + 1,
                                      "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
            try:
                report.update(await self._cycle())
                report["ok"] = True
            except CollectError as error:
                report.update(ok=False, stage="collect", error=str(error))
                self.num_failed_cycles += 1
            except Exception as error:  # a bug must not take the service down: report it, log the traceback
                logger.exception("capacity cycle failed")
                report.update(ok=False, stage="internal",
                              error=f"the cycle failed unexpectedly ({error!r}); see the service's log")
                self.num_failed_cycles += 1
            self.num_cycles += 1
            report["duration_ms"] = round(1000 * (time.perf_counter() - started), 1)
            self.last_report = report
            logger.info("capacity cycle %d: %s", report["cycle"], json.dumps(report.get("decided", report.get("error"))))
            return report

    async def _cycle(self) -> dict[str, Any]:
        assert self.spec is not None and self.actuator is not None, self.why_not_invocable
        spec, actuator = self.spec, self.actuator
        previous = self.last_sample
        if previous is None:
            previous = await self.collect()
        wait_s = previous.taken_at_s + self.min_window_s - self.clock()
        if wait_s > 0:  # rates over a few milliseconds are noise: measure over at least min_window_s
            await asyncio.sleep(wait_s)
        sample = await self.collect()
        if sample.taken_at_s <= previous.taken_at_s:
            raise CollectError("the clock did not advance between two samples")
        loads = observed_load(previous, sample)
        window_s = sample.taken_at_s - previous.taken_at_s
        for binding in spec.bindings:  # a variant never requested has no series yet: it saw no load
            loads.setdefault(binding.variant, ObservedLoad(binding.variant, window_s, 0.0, 0.0, 0.0, None, None, 0.0))
        self.last_sample = sample
        current = await actuator.current_replicas(spec.bindings)
        system = system_with_load(spec.base, spec.bindings, loads, current_replicas=current,
                                  current_accelerators=self.accelerators)
        plan = await asyncio.to_thread(plan_capacity, system, solver=self.solver, unlimited=self.unlimited)
        for allocation in plan.allocations:
            if allocation.accelerator:
                self.accelerators[allocation.server] = allocation.accelerator
        context = ReplicaContext(now_s=sample.taken_at_s, desired=desired_replicas(plan, spec.bindings),
                                 current=current, settings=spec.settings, bindings=spec.by_server)
        decisions, self.hysteresis = decide_replicas(context, self.hysteresis)
        variant_of = {binding.server: binding.variant for binding in spec.bindings}
        changes = [ReplicaChange(d.server, variant_of[d.server], d.target) for d in decisions if d.changes]
        results = await actuator.apply(changes) if changes else []
        bound = {binding.variant for binding in spec.bindings}
        return {
            "window_s": round(window_s, 3),
            "collected": {
                key: {
                    "arrival_rate_rps": _round(load.arrival_rate_rps), "input_rate_rps": _round(load.input_rate_rps),
                    "success_rate_rps": _round(load.success_rate_rps), "rejected_rate_rps": _round(load.rejected_rate_rps),
                    "mean_batch_size": _round(load.mean_batch_size), "mean_latency_ms": _round(load.mean_latency_ms),
                    "pending_requests": load.pending_requests, **({"counters_reset": True} if load.counters_reset else {}),
                }
                for key, load in sorted(loads.items()) if key in bound
            },
            "optimized": _plan_summary(plan, spec),
            "decided": [
                {"server": d.server, "variant": variant_of.get(d.server), "current": d.current, "desired": d.desired,
                 "target": d.target, "reason": d.reason}
                for d in decisions
            ],
            "actuator": actuator.name,
            "applied": [result.as_json() for result in results],
        }

    async def run_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.cycle()  # never raises: a failed cycle is reported, and retried next interval

    # -- optimize on demand ----------------------------------------------------------------------
    async def optimize(self, system: CapacitySystem, *, solver: str | None, unlimited: bool | None) -> dict[str, Any]:
        plan = await asyncio.to_thread(plan_capacity, system, solver=solver or self.solver,
                                       unlimited=self.unlimited if unlimited is None else unlimited)
        return solution_json(plan)

    async def aclose(self) -> None:
        await self.client.aclose()


# --------------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------------


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _bool_query(request: Request, name: str) -> bool | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise InvalidInputError(f"query parameter {name}={value!r}: use true or false")


def build_app(loop: CapacityLoop, *, interval_s: float | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The REST app; with `interval_s` (> 0) a background task runs a cycle every interval."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        task = None
        if loop.why_not_invocable is None:
            await loop.take_baseline()
            if interval_s:
                task = asyncio.create_task(loop.run_forever(interval_s))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await loop.aclose()

    async def optimize(request: Request) -> Response:
        try:
            body = await read_limited_body(request, max_body_bytes)
        except PayloadTooLargeError as error:
            return _error(error.message, 413)
        try:
            solver = request.query_params.get("solver")
            if solver is not None and solver not in SOLVERS:
                raise InvalidInputError(f"query parameter solver={solver!r} is unknown: use one of {', '.join(SOLVERS)}")
            unlimited = _bool_query(request, "unlimited")
            system = parse_system_body(body, request.headers.get("content-type"))
        except InvalidInputError as error:
            return _error(str(error), 400)
        try:
            solution = await loop.optimize(system, solver=solver, unlimited=unlimited)
        except Exception as error:  # a planner bug is a 500 with a message, never a dead service
            logger.exception("POST /optimize failed")
            return _error(f"planning failed unexpectedly ({error!r}); see the service's log", 500)
        return JSONResponse(solution)

    async def invoke(request: Request) -> Response:
        reason = loop.why_not_invocable
        if reason is not None:
            return _error(reason, 409)
        report = await loop.cycle()
        status = 200 if report["ok"] else 502 if report["stage"] == "collect" else 500
        return JSONResponse(report, status_code=status)

    async def last_report(request: Request) -> Response:
        if loop.last_report is None:
            return _error("no cycle has run yet: GET /invoke runs one", 404)
        return JSONResponse(loop.last_report)

    async def healthz(request: Request) -> Response:
        return JSONResponse({
            "ok": True, "cycles": loop.num_cycles, "failed_cycles": loop.num_failed_cycles,
            "interval_s": interval_s or None, "invocable": loop.why_not_invocable is None,
            "actuator": loop.actuator.name if loop.actuator else None,
        })

    routes = [
        Route("/optimize", optimize, methods=["POST"]),
        Route("/invoke", invoke, methods=["GET"]),
        Route("/report", last_report, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def run_control_service(
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    runtime_url: str | None = None,
    base_system: Path | None = None,
    interval_s: float = 60.0,
    admin_token: str | None = None,
    emit_patches: Path | None = None,
    kubeconfig: Path | None = None,
    namespace: str | None = None,
    label: str | None = None,
    solver: str | None = None,
    unlimited: bool | None = None,
) -> None:
    """Validate the options of `shoal plan capacity --serve`, then serve until interrupted."""
    import uvicorn

    kubernetes = emit_patches is not None or kubeconfig is not None
    if (runtime_url is None) != (base_system is None):
        given, missing = ("--runtime-url", "--base-system") if base_system is None else ("--base-system", "--runtime-url")
        raise InvalidInputError(
            f"{given} needs {missing}: cycles collect from the runtime at --runtime-url and map its variants to "
            "servers with the control file --base-system (give both, or neither to serve POST /optimize only)"
        )
    if not kubernetes and (namespace is not None or label is not None):
        raise InvalidInputError("--namespace and --label apply to Kubernetes only: add --emit-patches DIR or --kubeconfig PATH")
    if kubernetes and admin_token is not None:
        raise InvalidInputError(
            "--admin-token is for scaling the runtime; with --emit-patches/--kubeconfig Kubernetes is scaled instead: drop it"
        )
    if interval_s < 0:
        raise InvalidInputError(f"--interval-s must be >= 0 (0: only GET /invoke runs cycles), got {interval_s}")
    spec = load_control_file(base_system) if base_system is not None else None
    # The port is taken before anything else is set up or printed: one in use is an `error:`
    # line, not the address the loop would serve on followed by uvicorn's error.
    listening = bind_http_socket(host, port, port_option="--port")
    client = httpx.AsyncClient()  # one connection pool for collecting and actuating
    actuator: ReplicaActuator | None = None
    if kubernetes:
        apps_api = load_apps_api(kubeconfig) if kubeconfig is not None else None
        actuator = KubernetesActuator(namespace=namespace or "default", label_key=label or "shoal.ai/server",
                                      emit_dir=emit_patches, apps_api=apps_api)
    elif runtime_url is not None:
        actuator = RuntimeReplicaActuator(runtime_url, admin_token=admin_token, client=client)
    loop = CapacityLoop(spec=spec, runtime_url=runtime_url, actuator=actuator, solver=solver, unlimited=unlimited,
                        client=client)
    app = build_app(loop, interval_s=interval_s if spec is not None else None)
    what = f"every {interval_s:g} s and on GET /invoke" if spec is not None and interval_s else "on GET /invoke"
    cycles = f"; cycles {what}, actuator {actuator.name}" if spec is not None and actuator else "; POST /optimize only"
    print(f"shoal capacity loop on http://{host_in_url(host)}:{listening.getsockname()[1]}{cycles}", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listening])
    except KeyboardInterrupt as interrupt:
        # Ctrl-C (a bare interrupt) stops the loop as uvicorn.run took it, exit 0; shoal's CLI
        # turns SIGTERM into an interrupt naming the signal, which must still end in 143.
        if interrupt.args:
            raise
    finally:
        listening.close()
