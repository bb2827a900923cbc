"""Which variant of a family serves a request: the policies the runtime's frontends call.

Pure: the runtime builds one `VariantOption` per candidate (its accuracy, input size, whether it
is loaded, and the predicted time to answer a request admitted now, queue included) and the
policy returns a `Selection` with its reason. A policy never silently serves a variant that
breaks a stated requirement: when nothing fits, the selection says so and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "FastestMeetingSlo",
    "ModellessPolicy",
    "MostAccurateMeetingSlo",
    "Policy",
    "Query",
    "Selection",
    "StaticPolicy",
    "VariantOption",
    "make_policy",
    "POLICY_NAMES",
]


@dataclass(frozen=True)
class VariantOption:
    name: str
    accuracy: float
    input_size_px: int
    loaded: bool
    predicted_latency_ms: float
    """Predicted time from now to the answer if admitted now; inf when nothing can serve it."""
    cost_per_1000_usd: float = 0.0


@dataclass(frozen=True)
class Query:
    slo_ms: float
    min_accuracy: float = 0.0
    input_size_px: int | None = None
    """Side of the image the client sent; variants needing a larger input are not candidates."""
    max_cost_per_1000_usd: float | None = None


@dataclass(frozen=True)
class Selection:
    variant: str | None
    reason: str


class Policy(Protocol):
    name: str

    def select(self, query: Query, options: Sequence[VariantOption]) -> Selection: ...


def _affordable(query: Query, option: VariantOption) -> bool:
    return query.max_cost_per_1000_usd is None or option.cost_per_1000_usd <= query.max_cost_per_1000_usd


def _candidates(query: Query, options: Sequence[VariantOption]) -> list[VariantOption]:
    return [
        option
        for option in options
        if option.loaded
        and (query.input_size_px is None or option.input_size_px <= query.input_size_px)
        and option.accuracy >= query.min_accuracy
        and _affordable(query, option)
    ]


def _best_in_time(query: Query, options: Sequence[VariantOption], rank, describe) -> Selection:
    """The lowest `rank` among candidates predicted within the SLO, or why there is none."""
    fitting = [o for o in _candidates(query, options) if o.predicted_latency_ms <= query.slo_ms]
    if not fitting:
        return _nothing_fits(query, options)
    best = min(fitting, key=rank)
    return Selection(best.name, describe(best))


def _nothing_fits(query: Query, options: Sequence[VariantOption]) -> Selection:
    loaded = [option for option in options if option.loaded]
    if not loaded:
        return Selection(None, "no variant of this family is loaded")
    sized = [o for o in loaded if query.input_size_px is None or o.input_size_px <= query.input_size_px]
    if not sized:
        return Selection(None, f"every loaded variant needs a larger input than {query.input_size_px} px")
    accurate = [o for o in sized if o.accuracy >= query.min_accuracy]
    if not accurate:
        best = max(o.accuracy for o in sized)
        return Selection(None, f"no loaded variant reaches min_accuracy {query.min_accuracy:.3f} (best: {best:.3f})")
    affordable = [o for o in accurate if _affordable(query, o)]
    if not affordable:  # it used to blame the SLO
        cheapest = min(o.cost_per_1000_usd for o in accurate)
        return Selection(None, f"no loaded variant is within max_cost_per_1000_usd {query.max_cost_per_1000_usd:g} (cheapest: {cheapest:.3g})")
    fastest = min(o.predicted_latency_ms for o in affordable)
    return Selection(None, f"no variant meets the {query.slo_ms:.0f} ms SLO at the current load (fastest: {fastest:.1f} ms)")


@dataclass(frozen=True)
class StaticPolicy:
    """Always the named variant (a baseline, and what users pin for reproducibility)."""

    variant: str

    @property
    def name(self) -> str:
        return f"static:{self.variant}"

    def select(self, query: Query, options: Sequence[VariantOption]) -> Selection:
        if not any(option.name == self.variant for option in options):
            return Selection(None, f"static variant {self.variant!r} is not in this family")
        return Selection(self.variant, "static")


@dataclass(frozen=True)
class FastestMeetingSlo:
    """The variant predicted to answer soonest, among those meeting the requirements."""

    name: str = "fastest-meeting-slo"

    def select(self, query: Query, options: Sequence[VariantOption]) -> Selection:
        return _best_in_time(query, options, lambda o: (o.predicted_latency_ms, -o.accuracy, o.name),
                             lambda o: f"fastest predicted ({o.predicted_latency_ms:.1f} ms)")


@dataclass(frozen=True)
class MostAccurateMeetingSlo:
    """shoal's default: the most accurate variant whose predicted answer time meets the SLO."""

    name: str = "shoal"

    def select(self, query: Query, options: Sequence[VariantOption]) -> Selection:
        return _best_in_time(query, options, lambda o: (-o.accuracy, o.predicted_latency_ms, o.name),
                             lambda o: f"most accurate within SLO ({o.accuracy:.3f}, {o.predicted_latency_ms:.1f} ms)")


@dataclass(frozen=True)
class ModellessPolicy:
    """INFaaS-style model-less serving: the cheapest variant meeting every stated requirement.

    The runtime decides with `shoal.planner.modelless.select_variant` on live replica state (it
    may also load a variant for the query); `select` is the same rule on plain options.
    """

    name: str = "modelless"

    def select(self, query: Query, options: Sequence[VariantOption]) -> Selection:
        return _best_in_time(query, options, lambda o: (o.cost_per_1000_usd, -o.accuracy, o.name),
                             lambda o: f"cheapest meeting the requirements ({o.cost_per_1000_usd:.3g} $/1000)")


POLICY_NAMES = ("shoal", "modelless", "fastest-meeting-slo", "static:<variant>")


def make_policy(spec: str) -> Policy:
    """Build a policy from its command-line name; unknown names raise ValueError listing the choices."""
    if spec == "shoal":
        return MostAccurateMeetingSlo()
    if spec == "fastest-meeting-slo":
        return FastestMeetingSlo()
    if spec == "modelless":
        return ModellessPolicy()
    if spec.startswith("static:") and len(spec) > len("static:"):
        return StaticPolicy(spec.split(":", 1)[1])
    raise ValueError(f"unknown policy {spec!r}: use one of {', '.join(POLICY_NAMES)}")
