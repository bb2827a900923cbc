"""`exact`: the edge scheduling problem as a MILP solved with HiGHS (scipy.optimize.milp).

Optimal for the shared model of `model.py` (up to `mip_rel_gap`), so it is the yardstick of
the other policies and can run online for small instances.

A *configuration* (v, k) is a variant v at batch size batches[k]. For a client c on a worker
of device d running (v, k), the best input option is fixed (every feasible option weighs the
same fps, so the most accurate one wins): its value is ``a[c, d, v, k]`` (`best_accuracy`).
Variables (binary): ``z[w, v, k]`` worker w runs (v, k); ``x[c, w, v, k]`` client c is served
there. Only feasible combinations are created.

    maximise   sum fps[c] * a[c, d_w, v, k] * switch[w, v] * x[c, w, v, k] / sum(fps)
    subject to sum_{w,v,k} x[c, w, v, k] <= 1                                   every client
               sum_{v,k} z[w, v, k] <= 1                                        every worker
               sum_c fps[c] * x[c, w, v, k] <= capacity[d_w, v, k] * z[w, v, k]
               x[c, w, v, k] <= z[w, v, k]
               rank(config of w) >= rank(config of w')   interchangeable workers w < w'

The per-configuration capacity rows and the x <= z rows make the LP relaxation tight (the
aggregated form with one capacity row per variant took minutes on 4 workers x 32 clients).
Two reductions keep the optimum: a configuration is dropped when another one on the same
device carries at least its capacity, serves every client at least as accurately and costs
no more to switch to on any worker; interchangeable workers (same device, same switching
costs) get their configurations in non-increasing order, cutting symmetric branches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from shoal.planner.edge._tables import EdgeTables, keep_loaded_variants, tighten_batches

__all__ = ["ExactOptions", "ExactResult", "solve_exact", "useful_configs"]


@dataclass(frozen=True)
class ExactOptions:
    time_limit_s: float = 60.0
    mip_rel_gap: float = 1e-7
    break_symmetry: bool = True
    prune_dominated: bool = True


@dataclass(frozen=True)
class ExactResult:
    configs: list[tuple[int, int] | None]
    assignment: list[tuple[int, int] | None]
    optimality: str  # "proven_optimal" | "time_limit"
    solver_message: str
    mip_gap: float


def useful_configs(tables: EdgeTables, d: int, prune_dominated: bool = True) -> list[tuple[int, int]]:
    """Configurations (v, k) on device d that some client can use and no other one dominates."""
    num_v, num_k = tables.num_variants, len(tables.batches)
    accuracy = tables.best_accuracy[:, d].reshape(tables.num_clients, num_v * num_k)  # (C, VK)
    capacity = tables.capacity_fps[d].reshape(-1)
    switch = np.repeat(tables.switch, num_k, axis=1)  # (W, VK)
    candidates = np.flatnonzero((capacity > 0) & (accuracy >= 0).any(axis=0))
    if not prune_dominated or candidates.size < 2:
        return [divmod(int(i), num_k) for i in candidates]
    acc, cap, sw = accuracy[:, candidates], capacity[candidates], switch[:, candidates]
    # beats[j, i]: j is no worse than i in capacity, switching and every client's accuracy, and
    # strictly better somewhere or an exact tie with a smaller index; then i is dominated.
    no_worse = (cap[:, None] >= cap[None, :]) & (sw[:, :, None] >= sw[:, None, :]).all(axis=0)
    total, count = acc.sum(axis=0), (acc >= 0).sum(axis=0)  # necessary conditions, cheap to test
    no_worse &= (total[:, None] >= total[None, :]) & (count[:, None] >= count[None, :])
    np.fill_diagonal(no_worse, False)
    beats = np.zeros_like(no_worse)
    pairs_j, pairs_i = np.nonzero(no_worse)
    if pairs_j.size:
        bits = np.packbits(acc.T >= 0, axis=1)  # eligibility sets; j must contain i's
        subset = ~(bits[pairs_i] & ~bits[pairs_j]).any(axis=1)
        pairs_j, pairs_i = pairs_j[subset], pairs_i[subset]
        rows = np.ascontiguousarray(acc.T)  # (K, C): row gathers are contiguous
        ge = (rows[pairs_j] >= rows[pairs_i]).all(axis=1)
        pairs_j, pairs_i = pairs_j[ge], pairs_i[ge]
        strict = (
            (rows[pairs_j] > rows[pairs_i]).any(axis=1)
            | (cap[pairs_j] > cap[pairs_i])
            | (sw[:, pairs_j] > sw[:, pairs_i]).any(axis=0)
        )
        beats[pairs_j, pairs_i] = strict | (pairs_j < pairs_i)
    kept = candidates[~beats.any(axis=0)]
    return [divmod(int(i), num_k) for i in kept]


def solve_exact(tables: EdgeTables, options: ExactOptions = ExactOptions()) -> ExactResult:
    num_c, num_w = tables.num_clients, tables.num_workers
    scale = 1.0 / tables.total_fps if tables.total_fps > 0 else 0.0
    configs_by_device = {
        d: useful_configs(tables, d, options.prune_dominated) for d in set(tables.worker_device.tolist())
    }
    cost: list[float] = []
    z_index: dict[tuple[int, int, int], int] = {}
    x_index: dict[tuple[int, int, int, int], int] = {}
    rows_r: list[int] = []
    rows_c: list[int] = []
    rows_v: list[float] = []
    lower: list[float] = []
    upper: list[float] = []

    def add_row(cols: list[int], vals: list[float], lo: float, hi: float) -> None:
        rows_r.extend([len(upper)] * len(cols))
        rows_c.extend(cols)
        rows_v.extend(vals)
        lower.append(lo)
        upper.append(hi)

    by_client: dict[int, list[int]] = {}
    for w in range(num_w):
        d = int(tables.worker_device[w])
        worker_configs = []
        for v, k in configs_by_device[d]:
            if tables.switch[w, v] <= 0:
                continue
            clients = np.flatnonzero(tables.best_accuracy[:, d, v, k] >= 0)
            z_col = len(cost)
            z_index[(w, v, k)] = z_col
            cost.append(0.0)
            worker_configs.append(z_col)
            cols, vals = [], []
            for c in clients.tolist():
                col = len(cost)
                x_index[(c, w, v, k)] = col
                cost.append(-tables.fps[c] * tables.best_accuracy[c, d, v, k] * tables.switch[w, v] * scale)
                by_client.setdefault(c, []).append(col)
                cols.append(col)
                vals.append(tables.fps[c])
                add_row([col, z_col], [1.0, -1.0], -np.inf, 0.0)
            add_row(cols + [z_col], vals + [-tables.capacity_fps[d, v, k]], -np.inf, 0.0)
        if worker_configs:
            add_row(worker_configs, [1.0] * len(worker_configs), 0.0, 1.0)
    if not x_index:
        return ExactResult([None] * num_w, [None] * num_c, "proven_optimal", "nothing can be served", 0.0)
    for cols in by_client.values():
        add_row(cols, [1.0] * len(cols), 0.0, 1.0)
    if options.break_symmetry:
        for cols, vals in _symmetry_rows(tables, z_index):
            add_row(cols, vals, 0.0, np.inf)

    num_vars = len(cost)
    matrix = coo_array((rows_v, (rows_r, rows_c)), shape=(len(upper), num_vars)).tocsr()
    result = milp(
        c=np.asarray(cost),
        constraints=LinearConstraint(matrix, lower, upper),
        integrality=np.ones(num_vars),
        bounds=Bounds(0, 1),
        options={"time_limit": options.time_limit_s, "mip_rel_gap": options.mip_rel_gap, "disp": False},
    )
    if result.x is None:
        return ExactResult([None] * num_w, [None] * num_c, "time_limit", result.message, float("inf"))
    solution = np.round(result.x).astype(int)
    configs: list[tuple[int, int] | None] = [None] * num_w
    for (w, v, k), col in z_index.items():
        if solution[col]:
            configs[w] = (v, k)
    assignment: list[tuple[int, int] | None] = [None] * num_c
    for (c, w, v, k), col in x_index.items():
        if solution[col] and configs[w] == (v, k):
            d = tables.worker_device[w]
            assignment[c] = (w, int(tables.best_option[c, d, v, k]))
    configs = tighten_batches(tables, configs, assignment)
    configs, assignment = keep_loaded_variants(tables, configs, assignment)
    gap = float(getattr(result, "mip_gap", 0.0) or 0.0)
    optimality = "proven_optimal" if result.status == 0 else "time_limit"
    return ExactResult(configs, assignment, optimality, result.message, gap)


def _symmetry_rows(tables: EdgeTables, z_index: dict[tuple[int, int, int], int]):
    classes: dict[tuple, list[int]] = {}
    for w in range(tables.num_workers):
        key = (int(tables.worker_device[w]), tuple(np.round(tables.switch[w], 12)))
        classes.setdefault(key, []).append(w)
    num_k = len(tables.batches)
    by_worker: dict[int, list[tuple[float, int]]] = {}
    for (w, v, k), col in z_index.items():
        by_worker.setdefault(w, []).append((1.0 + v * num_k + k, col))
    for workers in classes.values():
        for first, second in zip(workers, workers[1:]):
            cols = [col for _, col in by_worker.get(first, [])] + [col for _, col in by_worker.get(second, [])]
            vals = [rank for rank, _ in by_worker.get(first, [])] + [-rank for rank, _ in by_worker.get(second, [])]
            if cols:
                yield cols, vals
