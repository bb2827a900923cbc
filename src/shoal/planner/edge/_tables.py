"""Dense numpy tables of the shared model, computed once per instance for `exact` and `shoal`.

Indices: c client, w worker, d device, v variant, k position in `batches` (the union of all
profiled batch sizes), o input option of a variant (0 = native). Missing entries (a batch
size a variant was not profiled at, an option a variant does not have) are infeasible.
The feasibility test repeats `model.end_to_end_ms` term by term so both agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shoal.planner.edge.model import (
    CAPACITY_TOLERANCE,
    LATENCY_TOLERANCE_MS,
    ClientAssignment,
    EdgeInstance,
    WorkerDecision,
    switch_factor,
)

__all__ = ["EdgeTables", "build_tables", "keep_loaded_variants", "tighten_batches", "useful_configs"]


@dataclass(frozen=True)
class EdgeTables:
    instance: EdgeInstance
    fps: np.ndarray  # (C,)
    total_fps: float
    batches: tuple[int, ...]
    worker_device: np.ndarray  # (W,) index into devices
    devices: tuple[str, ...]
    latency_ms: np.ndarray  # (D, V, K), inf where not profiled
    capacity_fps: np.ndarray  # (D, V, K), 0 where not profiled
    option_accuracy: np.ndarray  # (V, O), -1 where the option does not exist
    option_size: np.ndarray  # (V, O) input sizes, 0 where missing
    feasible: np.ndarray  # (C, D, V, K, O) bool
    best_accuracy: np.ndarray  # (C, D, V, K) best feasible option accuracy, -1 where none
    best_option: np.ndarray  # (C, D, V, K) its option index
    switch: np.ndarray  # (W, V) fraction of the plan interval served after switching

    @property
    def num_clients(self) -> int:
        return len(self.fps)

    @property
    def num_workers(self) -> int:
        return len(self.worker_device)

    @property
    def num_variants(self) -> int:
        return self.option_accuracy.shape[0]

    def worker_capacity(self, w: int) -> np.ndarray:
        """(V, K) capacity of worker w."""
        return self.capacity_fps[self.worker_device[w]]

    def decode(
        self, configs: list[tuple[int, int] | None], assignment: list[tuple[int, int] | None]
    ) -> tuple[dict[str, WorkerDecision], dict[str, ClientAssignment | None]]:
        """Worker configs (v, k) and client (w, o) indices -> the plan's named mappings.

        An idle worker keeps the variant it holds (batch size 1), or none (batch size 0).
        """
        instance = self.instance
        workers: dict[str, WorkerDecision] = {}
        for w, worker in enumerate(instance.workers):
            config = configs[w]
            if config is None:
                held = worker.loaded_variant
                workers[worker.name] = WorkerDecision(held, 1 if held is not None else 0)
            else:
                v, k = config
                workers[worker.name] = WorkerDecision(instance.variants[v].name, self.batches[k])
        clients: dict[str, ClientAssignment | None] = {}
        for c, client in enumerate(instance.clients):
            target = assignment[c]
            if target is None:
                clients[client.name] = None
                continue
            w, o = target
            v, _ = configs[w]  # type: ignore[misc]
            clients[client.name] = ClientAssignment(
                instance.workers[w].name, instance.variants[v].name, int(self.option_size[v, o])
            )
        return workers, clients


def build_tables(instance: EdgeInstance) -> EdgeTables:
    variants, workers, clients = instance.variants, instance.workers, instance.clients
    settings = instance.settings
    devices = tuple(sorted({worker.device for worker in workers}))
    batches = tuple(
        sorted({b for v in variants for t in (v.latency_ms, *v.latency_ms_by_device.values()) for b in t})
    )
    k_of = {b: k for k, b in enumerate(batches)}
    num_v, num_k, num_d = len(variants), len(batches), len(devices)
    latency = np.full((num_d, num_v, num_k), np.inf)
    for d, device in enumerate(devices):
        for v, variant in enumerate(variants):
            for b, ms in variant.latency_table(device).items():
                latency[d, v, k_of[b]] = ms
    batch_array = np.asarray(batches, dtype=float)
    with np.errstate(divide="ignore"):
        capacity = np.where(np.isfinite(latency), 1000.0 * batch_array / latency, 0.0)

    num_o = max(len(variant.inputs) for variant in variants)
    option_accuracy = np.full((num_v, num_o), -1.0)
    option_kbits = np.full((num_v, num_o), np.inf)
    option_size = np.zeros((num_v, num_o), dtype=int)
    for v, variant in enumerate(variants):
        for o, option in enumerate(variant.inputs):
            option_accuracy[v, o] = option.accuracy
            option_kbits[v, o] = option.request_kbits
            option_size[v, o] = option.input_size
    response = np.array([variant.response_kbits for variant in variants])

    fps = np.array([client.fps for client in clients], dtype=float)
    bandwidth = np.array([client.bandwidth_mbps for client in clients], dtype=float)
    rtt = np.array([client.rtt_ms for client in clients], dtype=float)
    slo = np.array([client.slo_ms for client in clients], dtype=float)
    # (C, V, O) network part of end_to_end_ms, in the same order of operations.
    up = option_kbits[None, :, :] / bandwidth[:, None, None]
    before = (rtt[:, None, None] + up) + settings.server_overhead_ms
    down = (response[None, :] / bandwidth[:, None])[:, :, None]
    e2e = (before[:, None, :, None, :] + 2.0 * latency[None, :, :, :, None]) + down[:, None, :, None, :]
    link_ok = fps[:, None, None] * option_kbits[None] <= 1000.0 * bandwidth[:, None, None] * (1 + CAPACITY_TOLERANCE)
    feasible = (
        (e2e <= slo[:, None, None, None, None] + LATENCY_TOLERANCE_MS)
        & link_ok[:, None, :, None, :]
        & (option_accuracy >= 0)[None, None, :, None, :]
        & np.isfinite(latency)[None, :, :, :, None]
    )
    scored = np.where(feasible, option_accuracy[None, None, :, None, :], -1.0)
    best_option = scored.argmax(axis=4)
    best_accuracy = np.take_along_axis(scored, best_option[..., None], axis=4)[..., 0]

    device_index = {device: d for d, device in enumerate(devices)}
    switch = np.array(
        [[switch_factor(worker, variant, settings) for variant in variants] for worker in workers]
    ).reshape(len(workers), num_v)
    return EdgeTables(
        instance=instance,
        fps=fps,
        total_fps=float(fps.sum()),
        batches=batches,
        worker_device=np.array([device_index[worker.device] for worker in workers], dtype=int),
        devices=devices,
        latency_ms=latency,
        capacity_fps=capacity,
        option_accuracy=option_accuracy,
        option_size=option_size,
        feasible=feasible,
        best_accuracy=best_accuracy,
        best_option=best_option,
        switch=switch,
    )


def tighten_batches(
    tables: EdgeTables, configs: list[tuple[int, int] | None], assignment: list[tuple[int, int] | None]
) -> list[tuple[int, int] | None]:
    """Give every used worker its lowest-latency batch size that still carries its clients.

    The objective does not change (same variants, options and clients); latency only drops.
    Workers without clients become idle (they keep the variant they hold, so nothing switches).
    """
    members: dict[int, list[tuple[int, int]]] = {}
    for c, target in enumerate(assignment):
        if target is not None:
            members.setdefault(target[0], []).append((c, target[1]))
    result: list[tuple[int, int] | None] = []
    for w, config in enumerate(configs):
        if config is None or w not in members:
            result.append(None)
            continue
        v, k = config
        d = tables.worker_device[w]
        load = sum(tables.fps[c] for c, _ in members[w])
        best = k
        for candidate in np.argsort(tables.latency_ms[d, v], kind="stable"):
            if tables.capacity_fps[d, v, candidate] * (1 + CAPACITY_TOLERANCE) < load:
                continue
            if all(tables.feasible[c, d, v, candidate, o] for c, o in members[w]):
                best = int(candidate)
                break
        result.append((v, best))
    return result


def keep_loaded_variants(
    tables: EdgeTables, configs: list[tuple[int, int] | None], assignment: list[tuple[int, int] | None]
) -> tuple[list[tuple[int, int] | None], list[tuple[int, int] | None]]:
    """Swap whole workloads between interchangeable workers so more workers keep their variant.

    Workers are interchangeable when they share a device and switching costs, so the objective
    is unchanged; this only breaks ties towards plans that load fewer variants.
    """
    instance = tables.instance
    names = [variant.name for variant in instance.variants]
    groups: dict[tuple, list[int]] = {}
    for w in range(tables.num_workers):
        groups.setdefault((int(tables.worker_device[w]), tables.switch[w].tobytes()), []).append(w)
    target = list(range(tables.num_workers))  # workload of w moves to target[w]
    for workers in groups.values():
        free = list(workers)
        pending = []
        for w in workers:
            if configs[w] is None:
                continue
            wanted = names[configs[w][0]]
            holder = next((u for u in free if instance.workers[u].loaded_variant == wanted), None)
            if holder is None:
                pending.append(w)
            else:
                target[w] = holder
                free.remove(holder)
        idle = [w for w in workers if configs[w] is None]
        for w in pending + idle:
            holder = w if w in free else free[0]
            target[w] = holder
            free.remove(holder)
    new_configs: list[tuple[int, int] | None] = [None] * tables.num_workers
    for w, config in enumerate(configs):
        new_configs[target[w]] = config
    new_assignment = [None if a is None else (target[a[0]], a[1]) for a in assignment]
    return new_configs, new_assignment


def useful_configs(tables: EdgeTables, d: int, prune_dominated: bool = True) -> list[tuple[int, int]]:
    """Configurations (v, k) on device d that some client can use and no other one dominates."""
    num_v, num_k = tables.num_variants, len(tables.batches)
    accuracy = tables.best_accuracy[:, d].reshape(tables.num_clients, num_v * num_k)  # (C, VK)
    capacity = tables.capacity_fps[d].reshape(-1)
    switch = np.repeat(tables.switch, num_k, axis=1)  # (W, VK)
    candidates = np.flatnonzero((capacity > 0) & (accuracy >= 0).any(axis=0))
    if not prune_dominated or candidates.size < 2:
        return [divmod(int(i), num_k) for i in candidates]
    rows, cap, sw = np.ascontiguousarray(accuracy[:, candidates].T), capacity[candidates], switch[:, candidates].T
    # Configuration i is dropped when a kept j is no worse in capacity, switching and every
    # client's accuracy. Dominance is transitive, so checking against kept ones suffices when
    # every possible dominator comes first: sort by capacity, then total accuracy, decreasing.
    order = np.lexsort((-rows.sum(axis=1), -cap))
    kept_rows: list[int] = []
    for i in order.tolist():
        if kept_rows:
            j = np.asarray(kept_rows)
            dominated = (cap[j] >= cap[i]) & (sw[j] >= sw[i]).all(axis=1) & (rows[j] >= rows[i]).all(axis=1)
            if dominated.any():
                continue
        kept_rows.append(i)
    kept = np.sort(candidates[kept_rows])
    return [divmod(int(i), num_k) for i in kept]
