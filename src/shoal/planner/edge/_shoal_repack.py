"""Optimal re-packing of two workers with fixed configurations (a two-knapsack DP).

Given the clients that may go to either worker (their values there, -inf where infeasible)
and the two capacities, find the assignment of maximum value. Frame rates are rationals, so
they are integer multiples of a common unit; the DP runs over (load of the first, load of the
second) in those units and is used only while that grid stays small.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

__all__ = ["frame_rate_unit", "repack_two"]

MAX_STATES = 150_000


def frame_rate_unit(fps: np.ndarray) -> float | None:
    """The largest u with every fps an integer multiple of u (None when there is no such u)."""
    fractions = [Fraction(float(f)).limit_denominator(1000) for f in fps]
    if any(abs(float(f) - x) > 1e-9 * max(1.0, x) for f, x in zip(fractions, fps.tolist())):
        return None
    denominator = 1
    for f in fractions:
        denominator = denominator * f.denominator // math.gcd(denominator, f.denominator)
    numerator = 0
    for f in fractions:
        numerator = math.gcd(numerator, f.numerator * (denominator // f.denominator))
    return numerator / denominator if numerator else None


def capacity_units(capacity_fps: float, unit: float) -> int:
    """Units that fit strictly within the capacity (the same 1e-9 margin as the greedy fills)."""
    return int(math.floor(capacity_fps * (1 - 1e-9) / unit + 1e-9))


def repack_two(
    values_1: np.ndarray, values_2: np.ndarray, units: np.ndarray, capacity_1: int, capacity_2: int
) -> tuple[float, np.ndarray] | None:
    """(best value, per item 0 = neither, 1 = first, 2 = second); None when the grid is too big."""
    if (capacity_1 + 1) * (capacity_2 + 1) > MAX_STATES:
        return None
    best = np.zeros((capacity_1 + 1, capacity_2 + 1))
    choice = np.zeros((units.size, capacity_1 + 1, capacity_2 + 1), dtype=np.int8)
    for i in range(units.size):
        u = int(units[i])
        new = best.copy()
        if values_1[i] > -np.inf and u <= capacity_1:
            candidate = best[: capacity_1 + 1 - u, :] + values_1[i]
            better = candidate > new[u:, :] + 1e-12
            new[u:, :][better] = candidate[better]
            choice[i, u:, :][better] = 1
        if values_2[i] > -np.inf and u <= capacity_2:
            candidate = best[:, : capacity_2 + 1 - u] + values_2[i]
            better = candidate > new[:, u:] + 1e-12
            new[:, u:][better] = candidate[better]
            choice[i, :, u:][better] = 2
        best = new
    a, b = np.unravel_index(int(best.argmax()), best.shape)
    total = float(best[a, b])
    result = np.zeros(units.size, dtype=np.int8)
    for i in range(units.size - 1, -1, -1):
        result[i] = choice[i, a, b]
        if result[i] == 1:
            a -= int(units[i])
        elif result[i] == 2:
            b -= int(units[i])
    return total, result
