"""The MILP of `exact`, built for scipy.optimize.milp (HiGHS).

Variables (binary): ``z[w, v, k]`` worker w runs configuration (v, k); ``x[c, w, v, k]`` client c
is served there (with its best feasible input option on that configuration).

    maximise   sum fps[c] * a[c, d_w, v, k] * switch[w, v] * x[c, w, v, k] / sum(fps)
    subject to sum_{w,v,k} x[c, w, v, k] <= 1                                   every client
               sum_{v,k} z[w, v, k] <= 1                                        every worker
               sum_c fps[c] * x[c, w, v, k] <= capacity[d_w, v, k] * z[w, v, k]
               x[c, w, v, k] <= z[w, v, k]
               rank(config of w) >= rank(config of w')   interchangeable workers w < w'

The per-configuration capacity rows and the x <= z rows make the LP relaxation tight (within
about 1% of the optimum on Jellyfish's grid; one aggregated capacity row per variant took
minutes on 4 workers x 32 clients). A set-packing formulation over worker patterns (column
generation) was also tried: its bound still left a gap of 1-3% there, so it did not save the
branching and is not used.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from shoal.planner.edge._tables import EdgeTables

__all__ = ["solve_compact"]


def solve_compact(
    tables: EdgeTables,
    configs_by_device: dict[int, list[tuple[int, int]]],
    *,
    time_limit_s: float,
    mip_rel_gap: float,
    break_symmetry: bool = True,
):
    """-> (configs, assignment, status, message, gap); status "optimal", "time_limit" or "no_solution"."""
    num_c, num_w = tables.num_clients, tables.num_workers
    scale = 1.0 / tables.total_fps if tables.total_fps > 0 else 0.0
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
        return [None] * num_w, [None] * num_c, "optimal", "nothing can be served", 0.0
    for cols in by_client.values():
        add_row(cols, [1.0] * len(cols), 0.0, 1.0)
    if break_symmetry:
        for cols, vals in _symmetry_rows(tables, z_index):
            add_row(cols, vals, 0.0, np.inf)

    num_vars = len(cost)
    matrix = coo_array((rows_v, (rows_r, rows_c)), shape=(len(upper), num_vars)).tocsr()
    result = milp(
        c=np.asarray(cost),
        constraints=LinearConstraint(matrix, lower, upper),
        integrality=np.ones(num_vars),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap, "disp": False},
    )
    if result.x is None:
        status = "time_limit" if result.status == 1 else "no_solution"
        return [None] * num_w, [None] * num_c, status, result.message, float("inf")
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
    gap = float(getattr(result, "mip_gap", 0.0) or 0.0)
    return configs, assignment, ("optimal" if result.status == 0 else "time_limit"), result.message, gap


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
