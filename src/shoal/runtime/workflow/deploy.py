"""From a family of classifiers to a placed, runnable two-stage workflow.

`build_classifier_pipeline` is what `shoal workflow deploy` does: it cuts every variant of a
family into a feature stage and a classifier-head stage (shoal.zoo.split), measures both
stages on the workers' devices, states the placement problem in the planner's own terms
(shoal.planner.workflow: per-task variants, per-worker latency, message sizes, prices, tiers,
an end-to-end accuracy table) and turns the plan into a WorkflowDeployment. The planning is
the same pure function `shoal plan workflow` runs on JellyBean's inputs.

The end-to-end accuracy of a (feature, head) pair cut from the same variant is the variant's
measured accuracy (the halves compose to the original bit for bit); heads are only valid on
their own backbone's features, so mixed pairs have no accuracy and are never chosen.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoal.core.errors import InvalidInputError
from shoal.core.models import Device
from shoal.planner.workflow import (
    DEFAULT_VARIANT,
    AccuracySpec,
    EndToEndAccuracyTable,
    PlanOptions,
    Worker,
    WorkflowPlan,
    WorkflowProblem,
    plan_workflow,
)
from shoal.runtime.workflow.deployment import SourceSpec, StageModel, TaskDeployment, WorkflowDeployment
from shoal.zoo.repository import ModelRepository
from shoal.zoo.split import split_classifier

__all__ = ["PipelineWorker", "build_classifier_pipeline", "deployment_from_plan", "measure_stage_latency_ms"]

SOURCE = "camera"
FEATURES = "features"
CLASSIFY = "classify"


@dataclass(frozen=True)
class PipelineWorker:
    name: str
    price_usd_per_hour: float
    tier: int = 0
    device: str = "cpu"


def measure_stage_latency_ms(model_path: Path, item_shape: Sequence[int], device: Device, *, repeats: int = 20) -> float:
    """Median batch-1 latency of one stage model, one intra-op thread (as the workers run it)."""
    from shoal.profiler.session import create_session

    session = create_session(model_path, device, intra_op_threads=1)
    feed = {session.get_inputs()[0].name: np.zeros((1, *item_shape), dtype=np.float32)}
    for _ in range(3):
        session.run(None, feed)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples)


def deployment_from_plan(
    name: str,
    problem: WorkflowProblem,
    plan: WorkflowPlan,
    stage_models: Mapping[tuple[str, str], StageModel],
    source_item_shapes: Mapping[str, Sequence[int]],
    *,
    slo_ms: float,
    worker_devices: Mapping[str, str] | None = None,
    family: str | None = None,
) -> WorkflowDeployment:
    """The runnable form of a successful plan; `stage_models` maps (task, variant) to its file."""
    if not plan.success:
        raise InvalidInputError(f"the plan cannot be deployed: {plan.status}: {plan.message}")
    tasks = {}
    for task in problem.tasks:
        variant = plan.model_assignment[task]
        if (task, variant) not in stage_models:
            raise InvalidInputError(f"no stage model for task {task!r} variant {variant!r}")
        shares = {worker: rate for worker, rate in plan.load_shares_rps.get(task, {}).items() if rate > 0}
        tasks[task] = TaskDeployment(inputs=problem.parents(task), variant=variant, model=stage_models[(task, variant)], load_shares_rps=shares)
    sources = {
        source: SourceSpec(item_shape=tuple(source_item_shapes[source]), rate_rps=rate)
        for source, rate in problem.source_rates_rps.items()
    }
    return WorkflowDeployment(
        name=name, sources=sources, tasks=tasks, worker_devices=dict(worker_devices or {}), slo_ms=slo_ms,
        family=family, plan=plan.to_json_dict(),
    )


def build_classifier_pipeline(
    repository: ModelRepository,
    family_name: str,
    out_dir: Path,
    *,
    workers: Sequence[PipelineWorker],
    rate_rps: float,
    accuracy_target: float,
    slo_ms: float,
    link_usd_per_gb: float = 0.09,
    options: PlanOptions | None = None,
    variant_names: Sequence[str] | None = None,
    latency_ms: Mapping[tuple[str, str], float] | None = None,
) -> tuple[WorkflowDeployment, WorkflowProblem, WorkflowPlan]:
    """Split, measure, plan and describe a camera -> features -> classify pipeline.

    Links between different tiers (the camera sits in tier 0) cost `link_usd_per_gb`; links
    inside a tier are free. `latency_ms` ((task, variant) -> ms) replaces the measurement, for
    planning against another machine's numbers.
    """
    if not workers:
        raise InvalidInputError("give at least one worker to place the pipeline on")
    family = repository.load_family(family_name)
    variants = [v for v in repository.variants(family_name) if variant_names is None or v.name in variant_names]
    if not variants:
        raise InvalidInputError(f"family {family_name!r} has none of the variants {list(variant_names or [])}")
    unmeasured = [v.name for v in variants if v.accuracy is None]
    if unmeasured:
        raise InvalidInputError(f"variants {unmeasured} have no measured accuracy; register them with a validation set first")
    out_dir = Path(out_dir)
    model_dir = out_dir / "models"
    stage_models: dict[tuple[str, str], StageModel] = {}
    stage_latency_ms: dict[tuple[str, str, str], float] = {}  # (task, variant, device) -> ms
    devices = {worker.device for worker in workers}
    problem_latency: dict[tuple[str, str, str], float] = {}
    message_bytes: dict[tuple[str, str, str, str], float] = {}
    for variant in variants:
        split = split_classifier(repository.model_path(family_name, variant.name), model_dir, variant.name)
        image_shape = (family.input_channels, variant.input_size_px, variant.input_size_px)
        stage_models[(FEATURES, variant.name)] = StageModel(
            path=str(split.backbone_path.relative_to(out_dir)), input_name=split.input_name, output_name=split.feature_name,
            item_shape=image_shape, resize_to_px=variant.input_size_px,
        )
        stage_models[(CLASSIFY, variant.name)] = StageModel(
            path=str(split.head_path.relative_to(out_dir)), input_name=split.feature_name, output_name=split.output_name,
            item_shape=(split.feature_dim,),
        )
        for device_name in devices:
            device = Device.parse(device_name)
            for task, path, shape in ((FEATURES, split.backbone_path, image_shape), (CLASSIFY, split.head_path, (split.feature_dim,))):
                measured = (latency_ms or {}).get((task, variant.name))
                stage_latency_ms[(task, variant.name, device_name)] = measured if measured is not None else measure_stage_latency_ms(path, shape, device)
        message_bytes[(SOURCE, FEATURES, DEFAULT_VARIANT, variant.name)] = 4 * int(np.prod(image_shape))
        message_bytes[(FEATURES, CLASSIFY, variant.name, DEFAULT_VARIANT)] = 4 * split.feature_dim
    for worker in workers:
        for variant in variants:
            for task in (FEATURES, CLASSIFY):
                problem_latency[(task, variant.name, worker.name)] = stage_latency_ms[(task, variant.name, worker.device)]
    accuracy = AccuracySpec(
        sink=CLASSIFY,
        target=accuracy_target,
        table=EndToEndAccuracyTable((FEATURES, CLASSIFY), {(v.name, v.name): float(v.accuracy) for v in variants}),
    )
    problem = WorkflowProblem(
        source_rates_rps={SOURCE: rate_rps},
        edges=((SOURCE, FEATURES), (FEATURES, CLASSIFY)),
        workers=tuple(Worker(w.name, w.price_usd_per_hour, w.tier) for w in workers),
        latency_ms=problem_latency,
        message_bytes=message_bytes,
        accuracy=accuracy,
        source_link_usd_per_gb={(SOURCE, w.name): link_usd_per_gb if w.tier != 0 else 0.0 for w in workers},
        worker_link_usd_per_gb={
            (a.name, b.name): link_usd_per_gb if a.tier != b.tier else 0.0 for a in workers for b in workers if a.name != b.name
        },
    )
    plan = plan_workflow(problem, "shoal", options)
    source_shape = (family.input_channels, family.source_image_px, family.source_image_px)
    deployment = deployment_from_plan(
        f"{family_name}-pipeline", problem, plan, stage_models, {SOURCE: source_shape},
        slo_ms=slo_ms, worker_devices={w.name: w.device for w in workers}, family=family_name,
    )
    return deployment, problem, plan
