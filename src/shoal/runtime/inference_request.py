"""What an inference request states and whether its input fits: checked at the boundary,
before a variant is chosen or anything is queued.

`requirements` reads the KServe v2 request `parameters` shoal understands (`timeout` in
microseconds as Triton, `slo_ms`, `priority`, `min_accuracy`, `max_cost_per_1000_usd`);
`check_input` and `preprocess` take the request's image tensor to what a variant runs on. Pure
functions: every failure is a `BadRequestError` (HTTP 400, gRPC INVALID_ARGUMENT) that names the
parameter or the input and what it must be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shoal.core.models import Family, Variant
from shoal.runtime.errors import BadRequestError
from shoal.zoo.preprocess import resize_images

__all__ = ["StatedRequirements", "check_input", "preprocess", "requirements"]


@dataclass(frozen=True)
class StatedRequirements:
    """What a request asks for, from its KServe v2 `parameters`."""

    slo_ms: float
    priority: int = 0
    min_accuracy: float = 0.0
    max_cost_per_1000_usd: float | None = None

    @property
    def query_class(self) -> tuple[float, float, float | None]:
        """Requests that want about the same are one class for the autoscaler: the SLO is rounded
        down to a quarter octave (clients that subtract their own overhead send a slightly
        different SLO each time, and one class per float would grow without bound)."""
        slo_bucket_ms = 2.0 ** (math.floor(math.log2(self.slo_ms) * 4.0) / 4.0)
        # Four significant digits: rounding to a thousandth of a ms made a tiny SLO a class of 0 ms.
        return (float(f"{slo_bucket_ms:.4g}"), self.min_accuracy, self.max_cost_per_1000_usd)


def _number(parameters: dict[str, Any], name: str) -> float | None:
    value = parameters.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BadRequestError(f"parameter {name!r} must be a finite number, got {value!r}")
    return float(value)


def requirements(parameters: dict[str, Any], default_slo_ms: float) -> StatedRequirements:
    """SLO (from `timeout` in microseconds, as Triton, or `slo_ms`), priority, min_accuracy,
    max_cost_per_1000_usd (a price limit per 1000 queries, from the server's price table)."""
    slo_ms = default_slo_ms
    timeout_us = _number(parameters, "timeout")
    if timeout_us is not None:
        slo_ms = timeout_us / 1000.0
        if slo_ms <= 0:  # also a positive timeout too small to be a number of milliseconds
            raise BadRequestError(f"parameter 'timeout' must be a positive number of microseconds, got {timeout_us!r}")
    stated_slo_ms = _number(parameters, "slo_ms")
    if stated_slo_ms is not None:
        if stated_slo_ms <= 0:
            raise BadRequestError("parameter 'slo_ms' must be a positive number of milliseconds")
        slo_ms = min(slo_ms, stated_slo_ms) if timeout_us is not None else stated_slo_ms
    priority = parameters.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise BadRequestError("parameter 'priority' must be an integer >= 0 (Triton's levels: 1 runs first, then 2, ...; 0 or none after every stated level)")
    min_accuracy = _number(parameters, "min_accuracy")
    if min_accuracy is not None and not 0.0 <= min_accuracy <= 1.0:
        raise BadRequestError("parameter 'min_accuracy' must be a number between 0 and 1")
    max_cost = _number(parameters, "max_cost_per_1000_usd")
    if max_cost is not None and max_cost <= 0:
        raise BadRequestError("parameter 'max_cost_per_1000_usd' must be a positive number of dollars")
    return StatedRequirements(float(slo_ms), int(priority), min_accuracy or 0.0, max_cost)


def check_input(family: Family, inputs: dict[str, np.ndarray], max_items: int) -> np.ndarray:
    """The request's one image tensor, if it is the family's input: its name, FP32 or UINT8, square
    images with the family's channels, 1..`max_items` of them, no larger than the family's source
    images (variants only shrink them)."""
    if set(inputs) != {family.input_name}:
        raise BadRequestError(f"expected exactly one input named {family.input_name!r}, got {sorted(inputs)}")
    tensor = inputs[family.input_name]
    if tensor.dtype not in (np.float32, np.uint8):
        raise BadRequestError(f"input {family.input_name!r} must be FP32 (scaled to [0, 1]) or UINT8, got {tensor.dtype}")
    if tensor.ndim != 4 or tensor.shape[1] != family.input_channels or tensor.shape[2] != tensor.shape[3]:
        raise BadRequestError(
            f"input {family.input_name!r} must have shape [batch, {family.input_channels}, S, S], got {list(tensor.shape)}"
        )
    if not 1 <= tensor.shape[0] <= max_items:
        raise BadRequestError(f"input {family.input_name!r} batch must be 1..{max_items}, got {tensor.shape[0]}")
    if tensor.shape[2] > family.source_image_px or tensor.shape[2] < 1:
        raise BadRequestError(f"input {family.input_name!r} side must be at most {family.source_image_px} px, got {tensor.shape[2]}")
    return tensor


def preprocess(tensor: np.ndarray, variant: Variant) -> np.ndarray:
    """The checked tensor as the variant takes it: FP32 (UINT8 scaled by the variant's
    preprocessing), area-resized to its input size."""
    if tensor.dtype == np.uint8:
        tensor = tensor.astype(np.float32) * float(variant.preprocessing.get("scale", 1.0 / 255.0))
    if tensor.shape[-1] != variant.input_size_px:
        tensor = resize_images(tensor, variant.input_size_px)
    return tensor
