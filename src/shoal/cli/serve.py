"""`shoal serve`: the serving runtime on a model repository."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from shoal.cli._app import app
from shoal.cli._common import RepoOption, open_repository, parse_device, read_prices
from shoal.core.errors import InvalidInputError
from shoal.planner.serving_policy import make_policy
from shoal.profiler.session import MAX_INTRA_OP_THREADS, MAX_WORKER_PROCESSES, check_device


@app.command("serve")
def serve(
    repo: RepoOption = None,
    host: Annotated[str, typer.Option("--host", help="Bind address (127.0.0.1 unless you mean to expose it).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port", min=0, max=65535, help="0 picks a free port (the ready line on stderr names it).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=0, max=65535, help="0 disables gRPC.")] = 8001,
    backend: Annotated[str, typer.Option("--backend", help="local (worker processes on this machine) or ray (Ray actors).")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster to join (auto, host:port, ray://host:port); default (or local): start a new local one.", show_default=False)] = None,
    ray_device_resource: Annotated[
        str | None, typer.Option("--ray-device-resource", help="Custom Ray resource every worker actor requires, e.g. the accelerator type of the profiles.", show_default=False)
    ] = None,
    ray_placement: Annotated[
        str, typer.Option("--ray-placement", help="How the workers' placement group (one bundle each, all or none) spreads: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD.")
    ] = "PACK",
    policy: Annotated[str, typer.Option("--policy", help="shoal | modelless | fastest-meeting-slo | static:<family>.<variant>")] = "shoal",
    device: Annotated[str, typer.Option("--device", help="cpu or cuda:N")] = "cpu",
    workers: Annotated[int, typer.Option("--workers", min=1, max=MAX_WORKER_PROCESSES, help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option("--threads", min=0, max=MAX_INTRA_OP_THREADS, help="Intra-op threads per worker (0: cores / workers).")] = 0,
    burst_threads: Annotated[
        int,
        typer.Option("--burst-threads", min=0, max=MAX_INTRA_OP_THREADS, help="CPU workers also hold a session with this many threads, used by a batch that runs while every other worker is idle (0: off; local backend).")
    ] = 0,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, max=1024)] = 32,
    queue_capacity: Annotated[int, typer.Option("--queue-capacity", min=1, help="Pending requests per variant before 429.")] = 1024,
    default_slo_ms: Annotated[float, typer.Option("--default-slo-ms", min=1.0, help="SLO of requests that state none.")] = 1000.0,
    max_queue_delay_ms: Annotated[float, typer.Option("--max-queue-delay-ms", min=0.0, help="How long a partial batch may wait for more.")] = 0.0,
    batches_ahead: Annotated[
        int, typer.Option("--batches-ahead", min=0, max=1, help="Send a worker its next batch shortly before the running one ends (1), or only once it is answered (0).")
    ] = 1,
    admission_headroom: Annotated[
        float, typer.Option("--admission-headroom", min=0.1, max=1.0, help="Admit a request only if its predicted finish is within this share of its SLO.")
    ] = 0.8,
    max_loop_lag_share: Annotated[
        float,
        typer.Option(
            "--max-loop-lag-share", min=0.0, max=1.0,
            help="Event-loop lag, as a share of the model's recent SLO, at which the frontend refuses every inference request on arrival (429, body unread) while the loop is saturated; from a third of it, a rising share (0: never).",
        ),
    ] = 0.06,
    cache_mb: Annotated[float, typer.Option("--cache-mb", min=0.001, max=1e9, help="Memory budget per worker for loaded variants (estimate: 3x the model file).")] = 2048.0,
    preload: Annotated[list[str] | None, typer.Option("--preload", help="Models to load at start (default: all).")] = None,
    control_interval_s: Annotated[float, typer.Option("--control-interval-s", min=0.05, help="Controller period.")] = 0.5,
    idle_unload_s: Annotated[float, typer.Option("--idle-unload-s", min=1.0, help="Unload a variant idle this long.")] = 300.0,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", min=0.001, max=65536.0, help="Largest accepted request body.")] = 64.0,
    edge_policy: Annotated[str, typer.Option("--edge-policy", help="Planner of the edge sessions (/v2/shoal/edge): shoal | jellyfish | exact.")] = "shoal",
    edge_interval_s: Annotated[float, typer.Option("--edge-interval-s", min=0.05, help="Edge re-planning period (also re-plans on arrivals and bandwidth jumps).")] = 0.5,
    autoscale: Annotated[bool, typer.Option("--autoscale", help="Set replicas per variant from the load (horizontal + vertical).")] = False,
    autoscale_slack: Annotated[float, typer.Option("--autoscale-slack", min=1.0, help="Provision this much more than the measured rate.")] = 1.05,
    autoscale_hold_s: Annotated[float, typer.Option("--autoscale-hold-s", min=0.0, help="Scale down only after demand stayed lower this long.")] = 30.0,
    prices: Annotated[
        Path | None, typer.Option("--prices", help="YAML 'device_kind: usd_per_hour' (cpu, cuda) for cost limits and autoscaling.", show_default=False)
    ] = None,
    workflow: Annotated[
        Path | None, typer.Option("--workflow", help="Also serve this workflow deployment.json (from `shoal workflow deploy`) as a model.", show_default=False)
    ] = None,
    admin_token: Annotated[str | None, typer.Option("--admin-token", envvar="SHOAL_ADMIN_TOKEN", help="Bearer token for load/unload.")] = None,
    fault_injection: Annotated[
        bool, typer.Option("--fault-injection", help="Mount POST /v2/faults/{controller|edge}/kill (token-guarded) for reliability tests.")
    ] = False,
) -> None:
    """Serve a repository over KServe v2 HTTP and gRPC until interrupted."""
    from shoal.runtime.server import run_server
    from shoal.runtime.worker_manager import ServeConfig

    if backend not in ("local", "ray"):
        raise InvalidInputError(f"--backend {backend!r}: use 'local' or 'ray'")
    from shoal.runtime.ray_backend import PLACEMENT_STRATEGIES

    if ray_placement not in PLACEMENT_STRATEGIES:
        raise InvalidInputError(f"--ray-placement {ray_placement!r}: use one of {', '.join(PLACEMENT_STRATEGIES)}")
    if fault_injection and not (admin_token or os.environ.get("SHOAL_ADMIN_TOKEN")):
        raise InvalidInputError("--fault-injection needs --admin-token: the kill route must not be open to anyone")
    if burst_threads and (backend != "local" or not device.startswith("cpu")):
        raise InvalidInputError("--burst-threads applies to CPU workers of the local backend: drop it, or use --backend local --device cpu")
    if burst_threads:
        from shoal.profiler.session import default_intra_op_threads

        if workers < 2:
            raise InvalidInputError("--burst-threads needs --workers >= 2 (a single worker would always burst: give it --threads instead)")
        threads_per_worker = threads or max(1, default_intra_op_threads() // workers)
        if burst_threads <= threads_per_worker:
            raise InvalidInputError(f"--burst-threads ({burst_threads}) must exceed the threads per worker ({threads_per_worker}), or be 0 (off)")
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise InvalidInputError("--backend ray needs Ray: pip install 'shoal[ray]'") from None
    repository = open_repository(repo)
    if not repository.family_names():
        raise InvalidInputError(f"repository {repository.root} holds no families (run `shoal zoo build-demo` or pass --repo)")
    try:
        make_policy(policy)
    except ValueError as error:
        raise InvalidInputError(f"--policy: {error}") from None
    parsed_device = parse_device(device)
    if backend == "ray" and address is None:  # a local Ray instance has this machine's devices only
        check_device(parsed_device)  # (it waited 120 s to place a GPU worker that could never start)
    if edge_policy not in ("shoal", "jellyfish", "exact"):
        raise InvalidInputError(f"--edge-policy {edge_policy!r}: use one of shoal, jellyfish, exact")
    if workflow is not None:
        from shoal.runtime.workflow import load_deployment

        load_deployment(workflow)  # a bad file is a clear error before anything starts
    price_table = ServeConfig.prices_usd_per_hour
    if prices is not None:
        price_table = tuple(read_prices(prices, "--prices").items())
        kind = parsed_device.kind
        if kind not in dict(price_table):  # a missing price would make every variant free
            raise InvalidInputError(f"--prices {prices}: no price for {kind!r}, the kind of --device {device}; add a '{kind}: usd_per_hour' line")
    config = ServeConfig(
        repository=repository.root,
        device=device,
        num_workers=workers,
        intra_op_threads=threads,
        burst_threads=burst_threads,
        max_batch_size=max_batch_size,
        queue_capacity=queue_capacity,
        default_slo_ms=default_slo_ms,
        max_queue_delay_ms=max_queue_delay_ms,
        batches_ahead=batches_ahead,
        admission_headroom=admission_headroom,
        max_loop_lag_share=max_loop_lag_share,
        policy=policy,
        preload=tuple(preload) if preload else None,
        cache_bytes_per_worker=int(cache_mb * 1024 * 1024),
        prices_usd_per_hour=price_table,
        autoscale=autoscale,
        backend=backend,
        ray_address=address,
        ray_device_resource=ray_device_resource,
        ray_placement_strategy=ray_placement,
        autoscale_slack=autoscale_slack,
        autoscale_hold_s=autoscale_hold_s,
    )
    run_server(
        config,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port or None,
        admin_token=admin_token or os.environ.get("SHOAL_ADMIN_TOKEN"),
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        control_interval_s=control_interval_s,
        idle_unload_after_s=idle_unload_s,
        edge_policy=edge_policy,
        edge_interval_s=edge_interval_s,
        workflow_deployment=workflow,
        fault_injection=fault_injection,
    )
