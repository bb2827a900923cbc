"""`jellyfish`: a clean-room re-implementation of Jellyfish's SA-DP scheduler (RTSS 2022).

Kept as the baseline, with the original's knobs and its own approximations; its plan is then
scored by the shared `evaluate_plan` like every other policy's.

Model selection, simulated annealing (server/controller/selection_algo.py): the state is the
variant index ("model number", variants ordered by accuracy) of every worker. A DEGRADE phase
lowers random workers by one step until every *effective* client is mapped (effectiveness
>= `effectiveness_threshold`); an UPGRADE phase moves every worker by -1/0/+1 at random and
keeps the best state by accuracy per request among fully effective mappings. Acceptance is
Metropolis with exp(-|delta| / T), T from 0.0125 down to 0.0005 by x0.99 (about 321 steps per
phase); mappings are cached by state. Afterwards the new variants are matched to workers in
sorted order so that workers keep variants close to the one they hold (`shuffleModels`).

Client mapping, knapsack DP (mapping_algo.py `DP_on_AggregateRate`): workers in decreasing
accuracy; for each, the unmapped clients in decreasing latency budget; each row's capacity is
the throughput at the largest batch size whose doubled latency fits that client's budget (and
not past the throughput peak), discretised in units of `fps_lcd`; the DP maximises the mapped
frame rate and the first cell reaching the maximum is backtracked.

Its own approximations, unlike the shared model: latency budget >= 2 x batch latency at the
smallest batch size whose throughput strictly exceeds the load; client frame rates rounded up
to multiples of `fps_lcd` (the original asserts they are multiples of 5); a client is
*effective* iff the uplink sustains its rate at the smallest variant and its budget there is
positive; only the native input size; no variant switching cost; variant matching across
workers only among workers of the same device. Budgets use the network model of the original
runtime (request + response over the bandwidth, plus rtt and server overhead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shoal.planner.edge._tables import EdgeTables

__all__ = ["JellyfishConfig", "JellyfishResult", "solve_jellyfish"]

DEGRADE, UPGRADE = -1, +1


@dataclass(frozen=True)
class JellyfishConfig:
    temp_initial: float = 0.0125
    temp_min: float = 0.0005
    cooling_ratio: float = 0.99
    fps_lcd: float = 5.0
    latency_budget_factor: float = 2.0
    effectiveness_threshold: float = 1.0
    shuffle_models: bool = True


@dataclass(frozen=True)
class JellyfishResult:
    configs: list[tuple[int, int] | None]
    assignment: list[tuple[int, int] | None]
    iterations: int
    mappings_computed: int


@dataclass(frozen=True)
class _Mapping:
    batch: tuple[int, ...]  # per worker: position in tables.batches, -1 when no client
    clients: tuple[int, ...]  # per client: worker index, -1 when unmapped
    effectiveness: float
    accuracy_per_request: float


class _Scheduler:
    def __init__(self, tables: EdgeTables, config: JellyfishConfig) -> None:
        instance = tables.instance
        self.tables, self.config = tables, config
        self.order = sorted(
            range(tables.num_variants),
            key=lambda v: (instance.variants[v].accuracy, min(instance.variants[v].latency_ms.values()), v),
        )
        self.accuracy = [instance.variants[v].accuracy for v in self.order]
        num_c = tables.num_clients
        clients = instance.clients
        settings = instance.settings
        self.fps = [client.fps for client in clients]
        self.units = [max(1, math.ceil(client.fps / config.fps_lcd - 1e-9)) for client in clients]
        # budget[c][m]: the original's latency budget of client c for model number m.
        self.budget = [[0.0] * len(self.order) for _ in range(num_c)]
        for c, client in enumerate(clients):
            for m, v in enumerate(self.order):
                variant = instance.variants[v]
                data_kbits = variant.request_kbits + variant.response_kbits
                net_ms = data_kbits / client.bandwidth_mbps + client.rtt_ms
                sustains = 1000.0 * client.bandwidth_mbps / variant.request_kbits > client.fps
                budget = client.slo_ms - net_ms - settings.server_overhead_ms
                self.budget[c][m] = max(0.0, budget) if sustains else 0.0
        self.effective = [self.budget[c][0] > 0 for c in range(num_c)]
        self.effective_fps = sum(f for f, e in zip(self.fps, self.effective) if e)
        # latency/throughput per worker device and model number, over tables.batches
        self.latency = [[tables.latency_ms[d, v].tolist() for v in self.order] for d in range(len(tables.devices))]
        self.throughput = [[tables.capacity_fps[d, v].tolist() for v in self.order] for d in range(len(tables.devices))]
        self.device = tables.worker_device.tolist()
        self.cache: dict[tuple, _Mapping] = {}
        self.computed = 0

    # --- client mapping (DP on aggregate rate) --------------------------------------------
    def _max_batch(self, c: int, d: int, m: int, upper: int) -> int:
        """Largest batch position (1-based count, 0 = none) fitting client c's budget, not past the peak."""
        latency, throughput = self.latency[d][m], self.throughput[d][m]
        b = upper
        factor = self.config.latency_budget_factor
        while b >= 1 and self.budget[c][m] < factor * latency[b - 1]:
            b -= 1
        peak = 0
        while peak < upper - 1 and throughput[peak] <= throughput[peak + 1]:
            peak += 1
        return min(peak + 1, b)

    def _assign_batch(self, members: list[int], d: int, m: int) -> int:
        """The original's check_and_assign: smallest batch with load < throughput, then budgets."""
        load = sum(self.units[c] for c in members) * self.config.fps_lcd
        throughput = self.throughput[d][m]
        for k, value in enumerate(throughput):
            if load < value:
                limit = self.config.latency_budget_factor * self.latency[d][m][k]
                return k if all(self.budget[c][m] >= limit for c in members) else -1
        return -1

    def mapping(self, models: tuple[int, ...]) -> _Mapping:
        key = tuple(sorted(zip(self.device, models)))
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        self.computed += 1
        num_w, lcd = len(models), self.config.fps_lcd
        num_k = len(self.tables.batches)
        batch = [-1] * num_w
        mapped = [-1] * len(self.fps)
        pool = list(range(len(self.fps)))
        for w in sorted(range(num_w), key=lambda w: -self.accuracy[models[w]]):
            if not pool:
                break
            m, d = models[w], self.device[w]
            pool.sort(key=lambda c: -self.budget[c][m])
            upper = self._max_batch(pool[0], d, m, num_k)
            if upper <= 0:
                continue
            rows, best_value, best_row = [1], 0, 0
            for i, c in enumerate(pool, start=1):
                upper = self._max_batch(c, d, m, upper)
                if upper <= 0:
                    break
                mask = (1 << (int(self.throughput[d][m][upper - 1] // lcd) + 1)) - 1
                taken = (rows[-1] << self.units[c]) & mask
                if taken.bit_length() - 1 > best_value:
                    best_value, best_row = taken.bit_length() - 1, i
                rows.append((rows[-1] | taken) & mask)
            if best_value == 0:
                continue
            chosen, value, row = [], best_value, best_row
            while value > 0 and row > 0:
                if not (rows[row - 1] >> value) & 1 or row == best_row:
                    chosen.append(pool[row - 1])
                    value -= self.units[pool[row - 1]]
                row -= 1
            k = self._assign_batch(chosen, d, m)
            if k < 0:
                continue
            batch[w] = k
            for c in chosen:
                mapped[c] = w
            chosen_set = set(chosen)
            pool = [c for c in pool if c not in chosen_set]
        result = self._metrics(models, tuple(batch), tuple(mapped))
        self.cache[key] = result
        return result

    def _metrics(self, models: tuple[int, ...], batch: tuple[int, ...], mapped: tuple[int, ...]) -> _Mapping:
        effective = sum(self.effective)
        rejected = sum(1 for c, e in enumerate(self.effective) if e and mapped[c] < 0)
        effectiveness = 1.0 - rejected / effective if effective else 0.0
        accuracy = 0.0
        if effectiveness > 0 and self.effective_fps > 0:
            served = sum(self.fps[c] * self.accuracy[models[w]] for c, w in enumerate(mapped) if w >= 0 and self.effective[c])
            accuracy = served / self.effective_fps
        return _Mapping(batch, mapped, effectiveness, accuracy)

    # --- model selection (simulated annealing) --------------------------------------------
    def _better(self, new: _Mapping, best: _Mapping, action: int) -> bool:
        if action == DEGRADE:
            return best.effectiveness < new.effectiveness
        return (
            best.accuracy_per_request < new.accuracy_per_request
            and new.effectiveness >= self.config.effectiveness_threshold
        )

    def _energy(self, new: _Mapping, current: _Mapping, action: int) -> float | None:
        if action == DEGRADE:
            return new.effectiveness - current.effectiveness
        if new.effectiveness >= self.config.effectiveness_threshold:
            return new.accuracy_per_request - current.accuracy_per_request
        return None

    def _neighbour(self, models: tuple[int, ...], action: int, rng: np.random.Generator) -> tuple[int, ...]:
        order = sorted(range(len(models)), key=lambda w: models[w], reverse=(action == DEGRADE))
        low = -1
        high = 0 if action == DEGRADE else 1
        new = list(models)
        for w in order:
            new[w] = min(len(self.order) - 1, max(0, models[w] + int(rng.integers(low, high + 1))))
        return tuple(new)

    def anneal(self, initial: tuple[int, ...], rng: np.random.Generator) -> tuple[tuple[int, ...], _Mapping, int]:
        config = self.config
        models, mapping = initial, self.mapping(initial)
        iterations = 0
        for action in (DEGRADE, UPGRADE):
            best_models, best_mapping = models, mapping
            temperature = config.temp_initial
            while True:
                if action == DEGRADE and best_mapping.effectiveness >= config.effectiveness_threshold:
                    break
                if action == UPGRADE and best_mapping.effectiveness < config.effectiveness_threshold:
                    break
                if temperature <= config.temp_min:
                    break
                new_models = self._neighbour(models, action, rng)
                new_mapping = self.mapping(new_models)
                if self._better(new_mapping, best_mapping, action):
                    best_models, best_mapping = new_models, new_mapping
                accept = self._better(new_mapping, mapping, action)
                if not accept:
                    delta = self._energy(new_mapping, mapping, action)
                    accept = delta is not None and math.exp(-abs(delta) / temperature) > rng.uniform()
                if accept:
                    models, mapping = new_models, new_mapping
                temperature *= config.cooling_ratio
                iterations += 1
            models, mapping = best_models, best_mapping
        return models, mapping, iterations


def solve_jellyfish(tables: EdgeTables, config: JellyfishConfig = JellyfishConfig(), *, seed: int = 0) -> JellyfishResult:
    scheduler = _Scheduler(tables, config)
    instance = tables.instance
    number_of = {v: m for m, v in enumerate(scheduler.order)}
    names = [variant.name for variant in instance.variants]
    initial = tuple(
        number_of[names.index(worker.loaded_variant)] if worker.loaded_variant is not None else 0
        for worker in instance.workers
    )
    rng = np.random.default_rng(seed)
    models, mapping, iterations = scheduler.anneal(initial, rng)
    worker_of = list(range(len(models)))  # position of each planned model after matching
    if config.shuffle_models:
        worker_of = _match_to_loaded(initial, models, scheduler.device)
    configs: list[tuple[int, int] | None] = [None] * len(models)
    for w, m in enumerate(models):
        # Idle workers still get the model and batch size 1, as the original runtime does.
        k = mapping.batch[w] if mapping.batch[w] >= 0 else 0
        configs[worker_of[w]] = (scheduler.order[m], k)
    assignment: list[tuple[int, int] | None] = [
        (worker_of[w], 0) if w >= 0 else None for w in mapping.clients
    ]
    return JellyfishResult(configs, assignment, iterations, scheduler.computed)


def _match_to_loaded(initial: tuple[int, ...], models: tuple[int, ...], device: list[int]) -> list[int]:
    """shuffleModelList: the i-th smallest new model goes to the worker of the i-th smallest old one."""
    target = list(range(len(models)))
    for d in set(device):
        workers = [w for w in range(len(models)) if device[w] == d]
        old = sorted(workers, key=lambda w: initial[w])
        new = sorted(workers, key=lambda w: models[w])
        for source, destination in zip(new, old):
            target[source] = destination
    return target
