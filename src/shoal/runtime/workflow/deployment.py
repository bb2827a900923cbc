"""What the workflow executor runs: a placed plan plus the ONNX file of every stage.

A deployment is the planner's answer made concrete: for each task the chosen variant's model
file and tensor names, and for each worker the requests/s of each task it carries. It is
written by `shoal workflow deploy` (deployment.json beside the stage models) and read by
`shoal serve --workflow` and `shoal workflow run`; this module is that file boundary, so every
field is validated here with a message that names it.

Data flow through a deployment: a source's tensor goes to every task fed by that source; a
task's output goes to every task it feeds; a task with several inputs (a join) receives the
outputs of all its parent tasks for the same request, concatenated along the last axis in the
order its inputs are listed. Tasks that feed nothing are the sinks: their outputs are the answer.
"""

from __future__ import annotations

import math
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shoal.core.errors import InvalidInputError
from shoal.core.models import Device, check_name
from shoal.core.serialization import dump_json, load_json

__all__ = ["StageModel", "SourceSpec", "TaskDeployment", "WorkflowDeployment", "load_deployment", "save_deployment"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageModel(BaseModel):
    """One ONNX file with one input and one output; `item_shape` excludes the batch axis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="relative to the deployment file, or absolute")
    input_name: str
    output_name: str
    item_shape: tuple[int, ...] = Field(min_length=1)
    resize_to_px: int | None = Field(None, ge=1, description="area-resize a source image [C, S, S] to this side first")

    @field_validator("item_shape")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(dim < 1 for dim in value):
            raise ValueError(f"every dimension must be >= 1, got {list(value)}")
        return value


class SourceSpec(_Model):
    item_shape: tuple[int, ...] = Field(min_length=1, description="one request's tensor, without the batch axis")
    rate_rps: float = Field(gt=0, allow_inf_nan=False, description="the injection rate the plan was made for")

    _positive = field_validator("item_shape")(StageModel._positive.__func__)


class TaskDeployment(_Model):
    inputs: tuple[str, ...] = Field(min_length=1, description="sources or tasks; several make a join")
    variant: str
    model: StageModel
    load_shares_rps: dict[str, float] = Field(min_length=1, description="worker -> planned requests/s")

    @field_validator("load_shares_rps")
    @classmethod
    def _shares_positive(cls, value: dict[str, float]) -> dict[str, float]:
        for worker, share in value.items():
            if not (share > 0 and math.isfinite(share)):
                raise ValueError(f"the share of worker {worker!r} must be a finite number > 0 requests/s, got {share}")
        # The router divides by the sum: shares of 1e308 each would overflow it to infinity.
        if not math.isfinite(sum(value.values())):
            raise ValueError("the shares add up past what a float holds; state them in requests/s")
        return value


def _check_source_fits(task_name: str, model: StageModel, source_name: str, source: SourceSpec) -> None:
    """A task fed by a source gets the source's items, area-resized to `resize_to_px` if set:
    that must be the stage's `item_shape`, or every request would fail at that stage."""
    shape = source.item_shape
    if model.resize_to_px is not None:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"tasks.{task_name}.model.resize_to_px resizes square images [C, S, S], but source {source_name!r} gives {list(shape)}")
        shape = (shape[0], model.resize_to_px, model.resize_to_px)
    if tuple(shape) != tuple(model.item_shape):
        raise ValueError(
            f"tasks.{task_name}.model.item_shape is {list(model.item_shape)} but source {source_name!r} gives it {list(shape)}"
            f"{' after resize_to_px' if model.resize_to_px is not None else ''}; make them agree (or set resize_to_px)"
        )


class WorkflowDeployment(_Model):
    name: str
    sources: dict[str, SourceSpec] = Field(min_length=1)
    tasks: dict[str, TaskDeployment] = Field(min_length=1)
    worker_devices: dict[str, str] = Field(default_factory=dict, description="worker -> device (default cpu)")
    slo_ms: float = Field(gt=0, allow_inf_nan=False, description="end-to-end latency objective of one request")
    family: str | None = Field(None, description="a repository family whose validation set the sinks' outputs can be scored on")
    plan: dict = Field(default_factory=dict, description="the planner's JSON answer, kept for reference")

    _check_name = field_validator("name")(lambda value: check_name(value, "workflow name"))

    @field_validator("worker_devices")
    @classmethod
    def _devices_understood(cls, value: dict[str, str]) -> dict[str, str]:
        for worker, device in value.items():
            try:
                Device.parse(device)
            except ValueError as error:
                raise ValueError(f"worker {worker!r}: {error}") from None
        return value

    @model_validator(mode="after")
    def _check_graph(self) -> "WorkflowDeployment":
        for name in [*self.sources, *self.tasks]:
            check_name(name, "node name")
        overlap = set(self.sources) & set(self.tasks)
        if overlap:
            raise ValueError(f"{sorted(overlap)} are both a source and a task; give them different names")
        for task_name, task in self.tasks.items():
            for parent in task.inputs:
                if parent not in self.sources and parent not in self.tasks:
                    raise ValueError(f"tasks.{task_name}.inputs names {parent!r}, which is neither a source nor a task")
            if len(set(task.inputs)) != len(task.inputs):
                raise ValueError(f"tasks.{task_name}.inputs lists an input twice")
            from_sources = [parent for parent in task.inputs if parent in self.sources]
            if from_sources and len(task.inputs) > 1:
                raise ValueError(
                    f"tasks.{task_name}: a join concatenates task outputs; it cannot also take source {from_sources[0]!r}"
                )
            if from_sources:
                _check_source_fits(task_name, task.model, from_sources[0], self.sources[from_sources[0]])
        try:
            TopologicalSorter({name: task.inputs for name, task in self.tasks.items()}).prepare()
        except CycleError as error:
            raise ValueError(f"tasks: the graph has a cycle through {error.args[1]}") from None
        return self

    # ---- derived views -------------------------------------------------------------------
    def topological_tasks(self) -> list[str]:
        order = TopologicalSorter({name: task.inputs for name, task in self.tasks.items()}).static_order()
        return [name for name in order if name in self.tasks]

    def children(self, node: str) -> list[str]:
        return [name for name, task in self.tasks.items() if node in task.inputs]

    @property
    def sinks(self) -> list[str]:
        return [name for name in self.tasks if not self.children(name)]

    @property
    def workers(self) -> list[str]:
        seen: dict[str, None] = {}
        for task in self.tasks.values():
            for worker in task.load_shares_rps:
                seen.setdefault(worker, None)
        return list(seen)

    def device_of(self, worker: str) -> str:
        return self.worker_devices.get(worker, "cpu")


def load_deployment(path: Path) -> tuple[WorkflowDeployment, Path]:
    """The deployment and the folder its relative model paths are resolved against."""
    path = Path(path)
    deployment = load_json(WorkflowDeployment, path)
    base = path.resolve().parent
    for name, task in deployment.tasks.items():
        model_path = Path(task.model.path)
        resolved = model_path if model_path.is_absolute() else base / model_path
        if not resolved.is_file():
            raise InvalidInputError(f"{path}: tasks.{name}.model.path {task.model.path!r} does not exist (looked in {resolved})")
    return deployment, base


def save_deployment(deployment: WorkflowDeployment, path: Path) -> None:
    dump_json(deployment, path)
