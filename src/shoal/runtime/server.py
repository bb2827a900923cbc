"""Assembling one server: the service, its worker processes and its frontends on one event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

import uvicorn

from shoal.core.errors import InvalidInputError
from shoal.runtime.faults import fault_route
from shoal.runtime.http_frontend import build_http_app
from shoal.runtime.http_protocol import one_write_protocol
from shoal.runtime.service import InferenceService
from shoal.runtime.sockets import bind_http_socket, host_in_url
from shoal.runtime.supervisor import Supervisor
from shoal.runtime.worker_manager import ServeConfig

__all__ = ["run_server", "serve_forever"]

logger = logging.getLogger(__name__)

STALL_AFTER_S = 600.0
"""A background loop silent this long is hung: the supervisor cancels and restarts it."""


async def serve_forever(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int | None = 8001,
    admin_token: str | None = None,
    max_body_bytes: int = 64 * 1024 * 1024,
    stop_event: asyncio.Event | None = None,
    control_interval_s: float = 0.5,
    idle_unload_after_s: float = 300.0,
    edge_policy: str = "shoal",
    edge_interval_s: float = 0.5,
    workflow_deployment: Path | None = None,
    fault_injection: bool = False,
) -> None:
    from shoal.runtime.controller import Controller
    from shoal.runtime.edge.sessions import EdgeSessionManager
    from shoal.runtime.edge.websocket import WEBSOCKET_MAX_BYTES, edge_route

    host = host or "0.0.0.0"  # uvicorn took "" for every interface; gRPC refused it
    service = InferenceService(config)
    service.shared_memory.max_read_bytes = max_body_bytes  # a tensor in shared memory is held to the body limit too
    workflows = {}
    if workflow_deployment is not None:
        from shoal.runtime.workflow import WorkflowExecutor, load_deployment

        deployment, base_dir = load_deployment(workflow_deployment)
        # The server's batching options hold for the workflow's stages too; its workers keep one
        # thread unless told (the plan's stage latencies were measured with one).
        workflows[deployment.name] = WorkflowExecutor(
            deployment, base_dir, metrics=service.metrics, max_request_items=config.max_request_items, batches_ahead=config.batches_ahead,
            max_batch_size=config.max_batch_size, queue_capacity=config.queue_capacity, intra_op_threads=config.intra_op_threads or 1,
            shared_memory_bytes=config.shared_memory_bytes, backend=config.backend, ray_address=config.ray_address,
            ray_placement_strategy=config.ray_placement_strategy, ray_device_resource=config.ray_device_resource,
            loop_monitor=service.loop_monitor,
        )
    # The ports are taken before anything slow starts: a port in use is one clear error within a
    # second, not a traceback after the workers loaded their models.
    http_socket = bind_http_socket(host, http_port)
    grpc_server = None
    try:
        if grpc_port:
            from shoal.runtime.grpc_frontend import bind_grpc_server

            grpc_server, grpc_port = bind_grpc_server(service, host=host, port=grpc_port, workflows=workflows, max_message_bytes=max_body_bytes,
                                                      admin_token=admin_token)
    except BaseException:
        http_socket.close()
        raise
    http_port = http_socket.getsockname()[1]
    try:
        await service.start()
        try:
            for name, executor in workflows.items():
                if name in service.model_names():
                    raise InvalidInputError(f"workflow name {name!r} is also a model of the repository; rename the workflow in its deployment file")
                await executor.start()
        except BaseException:
            await _stop_all(service, workflows)
            raise
    except BaseException:  # an embedding process that goes on must get its ports back
        http_socket.close()
        if grpc_server is not None:
            await grpc_server.stop(grace=None)
        raise
    supervisor = Supervisor(service.metrics.registry)
    controller = Controller(service, interval_s=control_interval_s, idle_unload_after_s=idle_unload_after_s)
    # Both loops may wait for a model load (seconds to minutes) inside one iteration: only a much
    # longer silence is a hang (cancelling a slow load half-way would do more harm than waiting).
    supervisor.add("controller", controller.run, stall_after_s=STALL_AFTER_S)
    edge = EdgeSessionManager(service, policy=edge_policy, interval_s=edge_interval_s)
    supervisor.add("edge", edge.run, stall_after_s=STALL_AFTER_S)
    extra_routes = [edge_route(edge)]
    if fault_injection:
        extra_routes.append(fault_route(supervisor, admin_token))
    app = build_http_app(service, admin_token=admin_token, max_body_bytes=max_body_bytes, extra_routes=extra_routes, workflows=workflows)
    http_server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=http_port, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=10,
                       # Nothing reads the client's address (no access log): rewriting it from
                       # X-Forwarded-* per request only cost CPU on the loop.
                       proxy_headers=False, http=one_write_protocol() or "auto", ws_max_size=WEBSOCKET_MAX_BYTES)
    )
    http_task: asyncio.Task | None = None
    try:  # whatever ends serving (a signal, a frontend that fails to start, an error), stop everything
        if grpc_server is not None:
            await grpc_server.start()
        stop = stop_event or asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        http_server.install_signal_handlers = lambda: None  # signals are handled here, for all frontends
        http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
        while not http_server.started and not http_task.done():
            await asyncio.sleep(0.01)
        if http_task.done():
            http_task.result()
            raise SystemExit(f"HTTP frontend failed to start on {host}:{http_port}")
        # Everything the server holds for good (modules, routes, sessions' metadata, metrics) is
        # allocated by now: moved out of the collector's sight, it is no longer traversed by every
        # full collection. Measured at 14,000 req/s of a light model: full collections paused the
        # event loop for 30-63 ms every ~1.5 s (the overload gate then refused nearly everything
        # for a quarter of a second each time); frozen, 0.5-5.5 ms.
        gc.collect()
        gc.freeze()
        service.metrics.gc_frozen_objects.set(gc.get_freeze_count())
        grpc_text = f", gRPC on {host_in_url(host)}:{grpc_port}" if grpc_server else ""
        workflow_text = "".join(f", workflow {name!r}" for name in workflows)
        # Harnesses that start the server on port 0 read the ports from this line.
        print(f"shoal serving {len(service.variants)} variants{workflow_text}: HTTP on http://{host_in_url(host)}:{http_port}{grpc_text}", file=sys.stderr, flush=True)
        await stop.wait()
        logger.info("shutting down")
    finally:
        gc.unfreeze()  # for a process that embeds the server and goes on after it
        http_server.should_exit = True
        await supervisor.stop()
        edge.close()
        if grpc_server is not None:
            await grpc_server.stop(grace=5)
        await _stop_all(service, workflows)
        if http_task is not None and not http_task.done():
            await http_task
        http_socket.close()


async def _stop_all(service: InferenceService, workflows: dict) -> None:
    for executor in workflows.values():
        await executor.stop()
    await service.stop()


def run_server(config: ServeConfig, **kwargs) -> None:
    # The frontend does small numpy work per request (resize, stacking). A multi-threaded BLAS
    # there spins threads that fight the worker processes for the cores: measured p99 of one
    # 128->64 px resize went from 0.9 ms to 150 ms on a loaded 2-core machine.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve_forever(config, **kwargs))
