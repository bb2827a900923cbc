"""End-to-end accuracy of a variant combination: a measured table, or per-task propagation.

Two ways to know how accurate a workflow is, as JellyBean profiles them:

* an end-to-end table over the variant combinations of some tasks (tasks outside the table do
  not change the accuracy), measured on a validation set; it is authoritative when given;
* per-task profiles: a task's variant maps the accuracies of its inputs to its own output
  accuracy through measured samples; a task without inputs has one standalone accuracy. The
  end-to-end accuracy is the sink's, propagated from the leaves. Only measured points are used:
  a combination whose input accuracies match no sample has an unknown accuracy and is never
  chosen (interpolating would risk plans below the target).

The profiles also carry JellyBean's per-variant cost proxy, used only by its beam search.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterator, Mapping

from shoal.core.errors import InvalidInputError

__all__ = [
    "AccuracySample",
    "AccuracySpec",
    "EndToEndAccuracyTable",
    "TaskAccuracyProfile",
    "accuracy_feasible_combinations",
    "best_reachable_accuracy",
    "end_to_end_accuracy",
]

_MATCH_TOLERANCE = 1e-9
TARGET_TOLERANCE = 1e-9
"""A combination meets the target when accuracy >= target - TARGET_TOLERANCE."""


@dataclass(frozen=True, eq=False)
class EndToEndAccuracyTable:
    """Measured end-to-end accuracy for each combination of variants of `tasks` (same order)."""

    tasks: tuple[str, ...]
    accuracy_by_variants: Mapping[tuple[str, ...], float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(
            self, "accuracy_by_variants",
            MappingProxyType({tuple(k): float(v) for k, v in self.accuracy_by_variants.items()}),
        )
        for key in self.accuracy_by_variants:
            if len(key) != len(self.tasks):
                raise InvalidInputError(
                    f"EndToEndAccuracyTable: row {key} has {len(key)} variants for {len(self.tasks)} tasks."
                )


@dataclass(frozen=True)
class AccuracySample:
    """One measurement: with inputs at these accuracies (in `inputs` order) the output reaches this."""

    input_accuracies: tuple[float, ...]
    output_accuracy: float


@dataclass(frozen=True, eq=False)
class TaskAccuracyProfile:
    """A task's accuracy samples per variant, its inputs (parent tasks) and beam-search cost proxy."""

    task: str
    inputs: tuple[str, ...]
    samples_by_variant: Mapping[str, tuple[AccuracySample, ...]]
    cost_proxy_by_variant: Mapping[str, float] = field(default_factory=dict)
    weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(
            self, "samples_by_variant",
            MappingProxyType({k: tuple(v) for k, v in self.samples_by_variant.items()}),
        )
        object.__setattr__(self, "cost_proxy_by_variant", MappingProxyType(dict(self.cost_proxy_by_variant)))
        for variant, samples in self.samples_by_variant.items():
            if not samples:
                raise InvalidInputError(f"TaskAccuracyProfile {self.task!r}: variant {variant!r} has no samples.")
            for sample in samples:
                if len(sample.input_accuracies) != len(self.inputs):
                    raise InvalidInputError(
                        f"TaskAccuracyProfile {self.task!r}: a sample of {variant!r} has "
                        f"{len(sample.input_accuracies)} input accuracies for inputs {list(self.inputs)}."
                    )

    def standalone_accuracy(self, variant: str) -> float:
        return max(s.output_accuracy for s in self.samples_by_variant[variant])


@dataclass(frozen=True, eq=False)
class AccuracySpec:
    """The requirement (`target` on the `sink`'s accuracy) and what is known to check it."""

    sink: str
    target: float
    table: EndToEndAccuracyTable | None = None
    task_profiles: Mapping[str, TaskAccuracyProfile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_profiles", MappingProxyType(dict(self.task_profiles)))
        if self.table is None and not self.task_profiles:
            raise InvalidInputError(
                "AccuracySpec: give an end-to-end table or per-task profiles; neither was given."
            )

    def validate_against(self, variants_by_task: Mapping[str, tuple[str, ...]]) -> None:
        if self.sink not in variants_by_task:
            raise InvalidInputError(f"AccuracySpec.sink {self.sink!r} is not a task of the workflow.")
        if self.table is not None:
            for i, task in enumerate(self.table.tasks):
                if task not in variants_by_task:
                    raise InvalidInputError(f"EndToEndAccuracyTable: task {task!r} is not in the workflow.")
                for key in self.table.accuracy_by_variants:
                    if key[i] not in variants_by_task[task]:
                        raise InvalidInputError(
                            f"EndToEndAccuracyTable: variant {key[i]!r} of {task!r} has no latency profile."
                        )
        for task, profile in self.task_profiles.items():
            if task not in variants_by_task:
                raise InvalidInputError(f"TaskAccuracyProfile: task {task!r} is not in the workflow.")
            for parent in profile.inputs:
                if parent not in self.task_profiles:
                    raise InvalidInputError(
                        f"TaskAccuracyProfile {task!r}: input {parent!r} has no accuracy profile."
                    )


def end_to_end_accuracy(spec: AccuracySpec, assignment: Mapping[str, str]) -> float | None:
    """The sink's accuracy under a complete variant assignment, or None when it is not known."""
    if spec.table is not None:
        key = tuple(assignment[t] for t in spec.table.tasks)
        return spec.table.accuracy_by_variants.get(key)
    return _propagate(spec, assignment, spec.sink, {})


def _propagate(spec: AccuracySpec, assignment: Mapping[str, str], task: str,
               memo: dict[str, float | None]) -> float | None:
    if task in memo:
        return memo[task]
    profile = spec.task_profiles.get(task)
    result: float | None = None
    if profile is not None and assignment.get(task) in profile.samples_by_variant:
        samples = profile.samples_by_variant[assignment[task]]
        if not profile.inputs:
            result = max(s.output_accuracy for s in samples)
        else:
            inputs = [_propagate(spec, assignment, p, memo) for p in profile.inputs]
            if all(a is not None for a in inputs):
                for sample in samples:
                    if all(abs(x - a) <= _MATCH_TOLERANCE
                           for x, a in zip(sample.input_accuracies, inputs)):
                        result = sample.output_accuracy
                        break
    memo[task] = result
    return result


def _all_combinations(variants_by_task: Mapping[str, tuple[str, ...]]) -> Iterator[dict[str, str]]:
    tasks = list(variants_by_task)
    for choice in itertools.product(*(variants_by_task[t] for t in tasks)):
        yield dict(zip(tasks, choice))


def accuracy_feasible_combinations(
    spec: AccuracySpec, variants_by_task: Mapping[str, tuple[str, ...]]
) -> list[tuple[dict[str, str], float]]:
    """Every complete assignment whose known accuracy meets the target, with that accuracy."""
    found = []
    for assignment in _all_combinations(variants_by_task):
        accuracy = end_to_end_accuracy(spec, assignment)
        if accuracy is not None and accuracy >= spec.target - TARGET_TOLERANCE:
            found.append((assignment, accuracy))
    return found


def best_reachable_accuracy(spec: AccuracySpec,
                            variants_by_task: Mapping[str, tuple[str, ...]]) -> float | None:
    """The highest known end-to-end accuracy of any combination (None if none is known)."""
    best = None
    for assignment in _all_combinations(variants_by_task):
        accuracy = end_to_end_accuracy(spec, assignment)
        if accuracy is not None and (best is None or accuracy > best):
            best = accuracy
    return best
