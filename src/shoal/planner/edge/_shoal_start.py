"""The starting solution of the `shoal` policy: clients in leniency order, cut into one block
per worker by dynamic programming.

A client that can use more configurations is more lenient (if c1's feasible configurations
include all of c2's, c1 counts at least as many). Sorting clients from most to least lenient
and giving every worker a contiguous block of that order mirrors the shape of good plans:
lenient clients share high-accuracy variants at small batch sizes, strict ones share fast
variants. For a block, the best configuration serving all of it is found for every start and
end at once (running AND of feasibility, running sums of load and value); the DP then picks,
worker by worker, the block boundaries (clients between blocks stay unserved) that maximise
the total value. Cost: O(K C^2) vector work plus O(W C^2) for the DP.
"""

from __future__ import annotations

import numpy as np

__all__ = ["contiguous_start"]


def _block_values(value: np.ndarray, capacity: np.ndarray, fps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """best[i, j]: value of serving clients i..j-1 (in the given order) on one worker; arg: its config."""
    num_k, num_c = value.shape
    best = np.full((num_c + 1, num_c + 1), -np.inf)
    arg = np.full((num_c + 1, num_c + 1), -1, dtype=int)
    feasible = value > -np.inf
    gain = np.where(feasible, value, 0.0)
    limit = capacity[:, None] * (1 - 1e-9)
    for start in range(num_c):
        run = np.logical_and.accumulate(feasible[:, start:], axis=1)
        if not run[:, 0].any():
            continue
        load = np.cumsum(fps[start:])
        ok = run & (load[None, :] <= limit)
        usable = ok.any(axis=0)
        if not usable.any():
            continue
        length = int(np.flatnonzero(usable)[-1]) + 1
        totals = np.where(ok[:, :length], np.cumsum(gain[:, start : start + length], axis=1), -np.inf)
        choice = totals.argmax(axis=0)
        best[start, start + 1 : start + length + 1] = totals[choice, np.arange(length)]
        arg[start, start + 1 : start + length + 1] = choice
    return best, arg


def contiguous_start(
    values: list[np.ndarray], capacities: list[np.ndarray], fps: np.ndarray
) -> tuple[list[int], np.ndarray]:
    """Per worker: config index (-1 idle) and per client: worker (-1 unserved).

    `values[w]` is worker w's (K_w, C) value matrix (-inf where infeasible), `capacities[w]`
    its (K_w,) capacities. Workers with identical matrices share one block table.
    """
    num_w, num_c = len(values), fps.size
    lenient = np.zeros(num_c)
    for value in values:
        lenient += (value > -np.inf).sum(axis=0)
    order = np.lexsort((-fps, -lenient))  # most lenient first, larger frame rates first on ties
    tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    table_of = []
    for w in range(num_w):
        key = next((u for u in tables if values[u].shape == values[w].shape and np.array_equal(values[u], values[w])
                    and np.array_equal(capacities[u], capacities[w])), None)
        if key is None:
            tables[w] = _block_values(values[w][:, order], capacities[w], fps[order])
            key = w
        table_of.append(key)
    # dp[j][e]: best value of the first e clients (in order) with workers 0..j-1
    positions = np.arange(num_c + 1)
    dp = np.zeros((num_w + 1, num_c + 1))
    block_start = np.full((num_w + 1, num_c + 1), -1)  # start of worker j-1's block ending at e, -1 idle
    reached_at = np.tile(positions, (num_w + 1, 1))  # e' <= e where dp[j][e] is attained (rest skipped)
    for j in range(1, num_w + 1):
        best, _ = tables[table_of[j - 1]]
        candidates = dp[j - 1][:, None] + best  # (start, end)
        starts = candidates.argmax(axis=0)
        with_block = candidates[starts, positions]
        row = np.maximum(dp[j - 1], with_block)
        block_start[j] = np.where(with_block > dp[j - 1], starts, -1)
        dp[j] = np.maximum.accumulate(row)
        reached_at[j] = np.maximum.accumulate(np.where(row >= dp[j], positions, 0))
    configs = [-1] * num_w
    assign = np.full(num_c, -1)
    end = num_c
    for j in range(num_w, 0, -1):
        end = int(reached_at[j][end])
        start = int(block_start[j][end])
        if start >= 0:
            _, arg = tables[table_of[j - 1]]
            configs[j - 1] = int(arg[start, end])
            assign[order[start:end]] = j - 1
            end = start
    return configs, assign
