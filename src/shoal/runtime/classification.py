"""Triton's classification extension: an output answered as its top classes, not its tensor.

A request asks for it with the output parameter `classification: N` (tritonclient's
`InferRequestedOutput(name, class_count=N)`). The output then comes back as BYTES of shape
[batch, N]: for each item, its N highest-valued classes, highest first, each the string
`<value>:<index>` or `<value>:<index>:<label>` where the family names its classes. Clients of
an image classifier use it to receive a few strings per image instead of every class's score.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from shoal.runtime.errors import BadRequestError

__all__ = ["classification_count", "serialize_bytes_tensor", "top_classes"]


def classification_count(value: Any, what: str) -> int:
    """The `classification` parameter of an output: how many classes to answer (>= 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequestError(f"{what}: parameter 'classification' must be a whole number >= 1 (how many top classes to return), got {value!r}")
    return value


def top_classes(scores: np.ndarray, count: int, labels: Sequence[str] = ()) -> np.ndarray:
    """The `count` highest-valued classes of each item of `scores` ([batch, classes...]), as a
    [batch, count] array of UTF-8 strings `<value>:<index>[:<label>]`. Ties keep the lower index
    first; `count` beyond the number of classes gives every class. The value is printed as
    Triton prints it (six decimals)."""
    rows = scores.reshape(scores.shape[0], -1)
    count = min(count, rows.shape[1])
    # Negated in float64: in an unsigned or boolean dtype, negating does not reverse the order.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    answered = np.empty((rows.shape[0], count), dtype=object)
    for item, indices in enumerate(order):
        for rank, index in enumerate(indices):
            text = f"{float(rows[item, index]):f}:{index}"
            # A class past the family's names (an output wider than num_classes) has no label, as in Triton.
            answered[item, rank] = (f"{text}:{labels[index]}" if index < len(labels) else text).encode()
    return answered


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """A BYTES tensor's raw form in the KServe v2 binary extension and in gRPC's
    `raw_output_contents`: every element, in row-major order, as a 4-byte little-endian length
    and its bytes."""
    return b"".join(struct.pack("<I", len(element)) + element for element in array.ravel())
