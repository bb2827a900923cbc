"""`shoal workflow run`: drive a deployed workflow and compare what ran with what was planned.

The executor is started in this process (its stages in worker processes) and fed by a
closed loop of `concurrency` outstanding requests, so the run measures the executor, not a
network client. Reported: per task and worker the planned share and the measured share of
items (the planner/executor contract), latency percentiles, outcomes, and, when the deployment
names a family with a validation set, the live top-1 accuracy next to the plan's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shoal.runtime.errors import ServingError
from shoal.runtime.workflow import WorkflowExecutor, load_deployment
from shoal.zoo.repository import ModelRepository

__all__ = ["run_workflow_load"]


def _request_data(deployment, repository: ModelRepository | None, count: int, seed: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None]:
    """One item per request: the family's validation images when there are some, else noise."""
    validation = None
    if deployment.family and repository is not None and repository.has_family(deployment.family):
        validation = repository.load_validation(deployment.family)
    rng = np.random.default_rng(seed)
    if validation is not None and len(deployment.sources) == 1:
        images, labels = validation
        (source,) = deployment.sources
        picks = np.arange(count) % len(images)
        return [{source: images[i : i + 1]} for i in picks], labels[picks]
    requests = [
        {name: rng.integers(0, 256, size=(1, *spec.item_shape), dtype=np.uint8) for name, spec in deployment.sources.items()}
        for _ in range(count)
    ]
    return requests, None


async def _drive(executor: WorkflowExecutor, requests, concurrency: int, slo_ms: float | None, on_done: Callable[[], None] | None):
    latencies_ms: list[float] = [0.0] * len(requests)
    predictions: list[int | None] = [None] * len(requests)
    failures: dict[str, int] = {}
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < len(requests):
            index = next_index
            next_index += 1
            started = time.perf_counter()
            try:
                result = await executor.infer(requests[index], slo_ms=slo_ms)
                sink_output = next(iter(result.outputs.values()))
                predictions[index] = int(np.argmax(sink_output[0]))
            except ServingError as error:
                failures[type(error).__name__] = failures.get(type(error).__name__, 0) + 1
            latencies_ms[index] = (time.perf_counter() - started) * 1000.0
            if on_done:
                on_done()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies_ms, predictions, failures, time.perf_counter() - started


def run_workflow_load(
    deployment_path: Path,
    *,
    requests: int = 2000,
    concurrency: int = 8,
    slo_ms: float | None = None,
    repository: ModelRepository | None = None,
    seed: int = 0,
    on_done: Callable[[], None] | None = None,
) -> dict:
    deployment, base_dir = load_deployment(deployment_path)
    data, labels = _request_data(deployment, repository, requests, seed)

    async def main():
        executor = WorkflowExecutor(deployment, base_dir)
        try:
            await executor.start()
            outcome = await _drive(executor, data, concurrency, slo_ms, on_done)
        finally:
            await executor.stop()
        return outcome, executor.traffic_report()

    (latencies_ms, predictions, failures, wall_s), traffic = asyncio.run(main())
    answered = [i for i, p in enumerate(predictions) if p is not None]
    answered_latency = np.array([latencies_ms[i] for i in answered]) if answered else np.array([0.0])
    worst_share_error = max(
        abs(row["measured_share"] - row["planned_share"]) for workers in traffic.values() for row in workers.values()
    )
    result = {
        "workflow": deployment.name,
        "requests": requests,
        "concurrency": concurrency,
        "slo_ms": slo_ms or deployment.slo_ms,
        "answered": len(answered),
        "failures": failures,
        "throughput_rps": len(answered) / wall_s if wall_s > 0 else 0.0,
        # None, not 0 ms, when nothing was answered.
        "latency_ms": {
            "p50": float(np.percentile(answered_latency, 50)) if answered else None,
            "p99": float(np.percentile(answered_latency, 99)) if answered else None,
            "max": float(answered_latency.max()) if answered else None,
        },
        "within_slo": sum(1 for i in answered if latencies_ms[i] <= (slo_ms or deployment.slo_ms)) / requests,
        "traffic": traffic,
        "worst_share_error": worst_share_error,
        "planned_accuracy": deployment.plan.get("end_to_end_accuracy"),
        "model_assignment": {name: task.variant for name, task in deployment.tasks.items()},
    }
    if labels is not None and answered:
        result["measured_accuracy"] = float(np.mean([predictions[i] == labels[i] for i in answered]))
    return result
