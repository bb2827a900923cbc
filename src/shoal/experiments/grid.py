"""Experiment grids: the Jellyfish grid (clients x SLO x fps x trace x repetitions) run under
several policies, on the simulator or on the real runtime, with one row per run.

Grid file (YAML; every field optional but `family`):

    family: demo
    clients: [1, 2, 4, 8]
    slo_ms: [75, 100, 150]
    fps: [15, 25]
    traces: [synthetic, wifi, lte]        # built-in names or files of Mbit/s per second
    repetitions: 3                        # repetition r starts the clients at seed r's offsets
    duration_s: 60
    policies: [shoal, jellyfish, infaas, static-smallest, static-largest, static-best]
    propagation_ms: 5
    workers: 1

`static-best` is the most accurate static variant that keeps misses <= 1% in that cell (else
the one with the fewest misses): the simulator finds it by running every Pareto variant; the
real runtime runs the one the trace predicts (`choose_statics`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shoal.client.network import load_trace, trace_offsets
from shoal.core.errors import InvalidInputError
from shoal.core.serialization import read_yaml_file
from shoal.experiments.edge_serving import EdgeRun, EdgeScenario, StaticCandidate, choose_statics

__all__ = ["GridSpec", "GridCell", "POLICIES", "load_grid", "cells", "resolve_statics", "row_for"]

POLICIES = ("shoal", "jellyfish", "infaas", "static-smallest", "static-largest", "static-best")


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: str = "demo"
    clients: list[int] = Field(default=[1, 2, 4, 8], min_length=1)
    slo_ms: list[float] = Field(default=[75, 100, 150], min_length=1)
    fps: list[float] = Field(default=[15, 25], min_length=1)
    traces: list[str] = Field(default=["synthetic", "wifi", "lte"], min_length=1)
    repetitions: int = Field(default=1, ge=1, le=100)
    duration_s: float = Field(default=60.0, gt=0, le=3600)
    policies: list[str] = Field(default=list(POLICIES), min_length=1)
    propagation_ms: float = Field(default=5.0, ge=0, le=1000)
    workers: int = Field(default=1, ge=1, le=256)

    @field_validator("clients")
    @classmethod
    def _positive_clients(cls, values: list[int]) -> list[int]:
        if any(v < 1 or v > 4096 for v in values):
            raise ValueError("every client count must be 1..4096")
        return values

    @field_validator("slo_ms", "fps")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(not v > 0 for v in values):
            raise ValueError("every value must be positive")
        return values

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in POLICIES and not v.startswith("static:")]
        if unknown:
            raise ValueError(f"unknown policies {unknown}; use {', '.join(POLICIES)} or static:<family>.<variant>")
        return values


def load_grid(path: Path) -> GridSpec:
    if not path.is_file():
        raise InvalidInputError(f"grid file {path} does not exist")
    try:
        data = read_yaml_file(path) or {}
    except InvalidInputError as error:
        raise InvalidInputError(f"grid file {error}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"grid file {path} must be a mapping of fields (family, clients, slo_ms, ...)")
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInputError(f"grid file {path}: field {where!r}: {first['msg']}") from None
    for trace in spec.traces:
        load_trace(trace)
    return spec


@dataclass(frozen=True)
class GridCell:
    clients: int
    slo_ms: float
    fps: float
    trace: str
    repetition: int

    def scenario(self, spec: GridSpec) -> EdgeScenario:
        bandwidth = load_trace(self.trace)
        offsets = tuple(trace_offsets(bandwidth, self.clients, seed=self.repetition))
        return EdgeScenario(spec.family, bandwidth, offsets, fps=self.fps, slo_ms=self.slo_ms, duration_s=spec.duration_s, propagation_ms=spec.propagation_ms)

    def key(self) -> dict:
        return {"clients": self.clients, "slo_ms": self.slo_ms, "fps": self.fps, "trace": self.trace, "repetition": self.repetition}


def cells(spec: GridSpec) -> Iterator[GridCell]:
    for trace, clients, slo_ms, fps, repetition in itertools.product(spec.traces, spec.clients, spec.slo_ms, spec.fps, range(spec.repetitions)):
        yield GridCell(clients, slo_ms, fps, trace, repetition)


def resolve_statics(policy: str, candidates: Sequence[StaticCandidate], scenario: EdgeScenario, *, all_for_best: bool) -> list[str]:
    """The concrete `static:<variant>` settings a static policy needs in one cell."""
    ordered = sorted(candidates, key=lambda c: (c.input_size_px, c.server_ms, -c.accuracy))
    if policy == "static-smallest":
        return [f"static:{ordered[0].variant}"]
    if policy == "static-largest":
        return [f"static:{max(candidates, key=lambda c: (c.accuracy, -c.server_ms)).variant}"]
    if policy == "static-best":
        chosen = candidates if all_for_best else choose_statics(scenario, candidates, neighbours=0)
        return [f"static:{c.variant}" for c in chosen]
    return [policy]


def _quantiles(run: EdgeRun) -> list[float]:
    latencies = [r.latency_ms for r in run.all_records if r.latency_ms is not None]
    if not latencies:
        return []
    return [round(float(q), 2) for q in np.percentile(latencies, np.arange(1, 101))]


def row_for(cell: GridCell, policy: str, run: EdgeRun, extra: dict | None = None) -> dict:
    """One result row: the cell, the policy (and the concrete setting), the run's summary, the
    latency CDF (percentiles 1..100) and the assignment timeline of every client."""
    summary = run.summary()
    return {
        **cell.key(),
        "policy": policy,
        **summary,
        "latency_percentiles_ms": _quantiles(run),
        "assignment_timeline": {name: [[round(t, 3), v, s] for t, v, s in timeline] for name, timeline in run.assignments.items()},
        **(extra or {}),
    }


def best_static_row(rows: Sequence[dict]) -> dict | None:
    """Among rows of static settings of one cell: the most accurate with misses <= 1%, else
    the fewest misses; none when no static answered a frame (a tie of 100% misses names none)."""
    usable = [r for r in rows if r["frames"] and r["miss_rate"] < 1.0]
    within = [r for r in usable if r["miss_rate"] <= 0.01 and r["accuracy"] is not None]
    if within:
        return max(within, key=lambda r: r["accuracy"])
    return min(usable, key=lambda r: r["miss_rate"], default=None)


Runner = Callable[[GridCell, EdgeScenario, str], tuple[EdgeRun, dict]]
