"""`shoal`: a leniency-ordered DP start, then best-response local search, on the shared model.

Unlike Jellyfish it optimises the shared model directly (the latency bound at the batch size
it sets, any frame rate, every input size a variant accepts, switching costs, per-device
latency) and it is deterministic. A *configuration* is (variant, batch size); a client on a
configuration sends its most accurate feasible input, so its value there is
fps * accuracy * switch factor, and a worker's value is the sum over its clients.

1. Start (`_shoal_start.contiguous_start`): clients from most to least lenient, one block per
   worker, block boundaries and configurations chosen by dynamic programming.
2. Best response of one worker, for every worker in turn until none improves: with the other
   workers fixed, the configuration and client set that maximise the objective. A client on
   another worker is worth taking only for more than it is worth there; the worker's own
   clients may be dropped. All configurations are scored at once by a density-greedy knapsack
   (numpy) and the best few re-solved with a skip-fill pass; for few workers every
   configuration's knapsack is also solved exactly by a DP over frame-rate units (frame rates
   are coins: filling by density can block two clients that fit together).
3. Best response of a pair of workers: for every pair of candidate configurations, the first
   worker fills by its advantage over the second, the second takes what is left. This lets one
   worker upgrade while the other downgrades to absorb the clients it sheds, which no single
   move can do. When that finds nothing, the most promising pairs (by a fractional-knapsack
   upper bound) are packed exactly with a two-knapsack DP until no bound beats the best found.
   After an improving pair move, single moves run again.
4. Kicks, when nothing improves: the best few pair plans are applied even at a loss and followed
   by single moves and pair re-packing of everyone; kept if the result is better (a third
   worker re-packing is what makes some upgrades pay off).
5. For few workers the descent also runs from an empty plan and from the plan of Jellyfish's
   simulated annealing (seed 0; the annealing itself takes 3-80 ms at 2-8 workers), each with
   what is left of the work budget; the best result is kept.
   Best response is a strong local search but a deterministic one: on 2 of the 600 grid
   instances it stopped 0.4-0.8% below a plan that differs on 3-4 workers at once, which the
   annealing's random walk over configurations had found.

Every move is exact in the objective and keeps the state feasible. Effort is bounded by
counts (`max_rounds`, `work_budget` in client x configuration-pair evaluations,
`pair_max_workers`), never by a clock, so one instance always gives one plan. Steps 3-5 run
only up to `pair_max_workers` workers: beyond, the start and single moves already leave
little (a full pair pass gained 0.1-0.4% at 16 workers x 160 clients, for seconds).
`solve_shoal` stays deterministic: the annealing start always uses seed 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shoal.planner.edge._shoal_repack import capacity_units, frame_rate_unit, repack_two
from shoal.planner.edge._shoal_start import contiguous_start
from shoal.planner.edge._tables import EdgeTables, keep_loaded_variants, tighten_batches, useful_configs

__all__ = ["ShoalOptions", "ShoalResult", "solve_shoal"]

_EPS = 1e-12

Plan = tuple[list[tuple[int, int] | None], list[tuple[int, int] | None]]
"""Per worker its (variant, batch) or None; per client its (worker, input option) or None."""


@dataclass(frozen=True)
class ShoalOptions:
    max_rounds: int = 50
    """Rounds of single moves, and of pair-move passes."""
    refine_top: int = 4
    """Configurations per best response re-solved with the skip-fill knapsack."""
    pair_configs: int = 64
    """Candidate configurations per worker in a pair move (the best of each variant first)."""
    work_budget: int = 3_000_000
    """Client x configuration-pair evaluations the pair moves may spend in total."""
    empty_start: bool = True
    """For few workers, also descend from an empty plan (single moves build it up)."""
    kicks_per_pair: int = 4
    """Best pair plans tried as kicks (followed by single moves) when no move improves."""
    pair_max_workers: int = 8
    """Pair moves, kicks, the second start and the exact single-move packing only up to this many workers."""
    exact_single_cells: int = 2_000_000
    """Single moves pack exactly (knapsack DP) while configurations x capacity units x clients stay below this."""
    max_exact_pairs: int = 256
    """Configuration pairs per pair move packed exactly (two-knapsack DP), best upper bound first."""
    annealing_start: bool = True
    """For few workers, also descend from the plan of Jellyfish's simulated annealing (seed 0)."""


@dataclass(frozen=True)
class ShoalResult:
    configs: list[tuple[int, int] | None]
    assignment: list[tuple[int, int] | None]
    moves: int
    work: int


class _Search:
    def __init__(self, tables: EdgeTables, options: ShoalOptions) -> None:
        self.tables, self.options = tables, options
        self.fps = tables.fps
        self.tolerance = 1e-9 * max(1.0, tables.total_fps)
        self.configs_of_device: dict[int, list[tuple[int, int]]] = {}
        self.capacity_of_device: dict[int, np.ndarray] = {}
        self.worker_value: list[np.ndarray] = []  # (K, C): fps * accuracy * switch, -inf infeasible
        value_of_device: dict[int, np.ndarray] = {}
        for d in sorted(set(tables.worker_device.tolist())):
            configs = useful_configs(tables, d)
            self.configs_of_device[d] = configs
            vs = np.array([v for v, _ in configs], dtype=int)
            ks = np.array([k for _, k in configs], dtype=int)
            accuracy = tables.best_accuracy[:, d, vs, ks].T.reshape(len(configs), tables.num_clients)
            value_of_device[d] = np.where(accuracy >= 0, accuracy * self.fps[None, :], -np.inf)
            self.capacity_of_device[d] = tables.capacity_fps[d, vs, ks]
        for w in range(tables.num_workers):
            d = int(tables.worker_device[w])
            factor = np.array([tables.switch[w, v] for v, _ in self.configs_of_device[d]], dtype=float)
            value = value_of_device[d] * factor[:, None]
            value[np.isnan(value)] = -np.inf  # -inf * 0 where a switch takes the whole interval
            self.worker_value.append(value)
        self.config = [-1] * tables.num_workers  # index into configs_of_device[d], -1 idle
        self.assign = np.full(tables.num_clients, -1)
        self.value = np.zeros(tables.num_clients)
        self.moves = 0
        self.work = 0
        self.unit = frame_rate_unit(self.fps) if self.fps.size else None
        self.units = np.rint(self.fps / self.unit).astype(int) if self.unit else None
        self.exact_single = self.unit is not None and tables.num_workers <= options.pair_max_workers

    def capacity(self, w: int) -> np.ndarray:
        return self.capacity_of_device[int(self.tables.worker_device[w])]

    # --- knapsack pieces -----------------------------------------------------------------------
    def _gains(self, w: int, free: tuple[int, ...]) -> np.ndarray:
        """(K, C) objective change of putting each client on w; clients on `free` count as unserved."""
        elsewhere = np.where(np.isin(self.assign, free), 0.0, self.value)
        gains = self.worker_value[w] - elsewhere[None, :]
        gains[~(gains > _EPS)] = 0.0
        return gains

    @staticmethod
    def _prefix_values(gains: np.ndarray, fps: np.ndarray, capacity: np.ndarray) -> np.ndarray:
        """Density-greedy knapsack value of every row, stopping at the first client that does not fit."""
        order = np.argsort(-(gains / fps[None, :]), axis=1, kind="stable")
        sorted_gains = np.take_along_axis(gains, order, axis=1)
        load = np.cumsum(fps[order], axis=1)
        take = (load <= capacity[:, None] * (1 - 1e-9)) & (sorted_gains > 0)
        return (sorted_gains * take).sum(axis=1)

    @staticmethod
    def _skip_fill(gains_row: np.ndarray, fps: np.ndarray, capacity: float) -> tuple[float, list[int]]:
        candidates = np.flatnonzero(gains_row > 0)
        order = candidates[np.argsort(-(gains_row[candidates] / fps[candidates]), kind="stable")]
        total, load, chosen = 0.0, 0.0, []
        limit = capacity * (1 - 1e-9)
        for c, item_fps, gain in zip(order.tolist(), fps[order].tolist(), gains_row[order].tolist()):
            if load + item_fps <= limit:
                load += item_fps
                total += gain
                chosen.append(c)
        return total, chosen

    def _best_response(self, w: int) -> tuple[float, int, list[int]]:
        """(value after the move, config, clients) of worker w's best response."""
        capacity = self.capacity(w)
        if capacity.size == 0:
            return 0.0, -1, []
        gains = self._gains(w, (w,))
        relevant = np.flatnonzero((gains > 0).any(axis=0))
        if relevant.size == 0:
            return 0.0, -1, []
        sub, fps = gains[:, relevant], self.fps[relevant]
        prefix = self._prefix_values(sub, fps, capacity)
        best: tuple[float, int, list[int]] = (-np.inf, -1, [])
        for k in np.argsort(-prefix, kind="stable")[: self.options.refine_top].tolist():
            total, chosen = self._skip_fill(sub[k], fps, capacity[k])
            if total > best[0] + _EPS:
                best = (total, k, relevant[chosen].tolist())
        if self.exact_single:
            packed = self._exact_response(sub, relevant, capacity, best[0])
            if packed is not None:
                best = packed
        return best

    def _exact_response(self, gains: np.ndarray, relevant: np.ndarray, capacity: np.ndarray, lower: float):
        """Every configuration's 0-1 knapsack solved exactly at once (frame-rate units), if any beats `lower`."""
        units = self.units[relevant]
        caps = np.array([capacity_units(c, self.unit) for c in capacity.tolist()], dtype=int)
        top = int(caps.max())
        if top <= 0 or gains.shape[0] * (top + 1) * relevant.size > self.options.exact_single_cells:
            return None
        self.work += gains.shape[0] * (top + 1) * relevant.size // 64
        table = np.zeros((gains.shape[0], top + 1))
        for index in range(relevant.size):
            u = int(units[index])
            if u > top:
                continue
            candidate = table[:, : top + 1 - u] + gains[:, index : index + 1]
            np.maximum(table[:, u:], np.where(gains[:, index : index + 1] > 0, candidate, -np.inf), out=table[:, u:])
        totals = table[np.arange(gains.shape[0]), caps]
        k = int(np.argmax(totals))
        if totals[k] <= lower + self.tolerance:
            return None
        values = np.where(gains[k] > 0, gains[k], -np.inf)
        result = repack_two(values, np.full_like(values, -np.inf), units, int(caps[k]), 0)
        if result is None:
            return None
        return result[0], k, relevant[result[1] == 1].tolist()

    # --- moves ---------------------------------------------------------------------------------
    def _current(self, workers: tuple[int, ...]) -> float:
        return float(self.value[np.isin(self.assign, workers)].sum())

    def _apply(self, w: int, k: int, chosen: list[int]) -> None:
        self.value[self.assign == w] = 0.0
        self.assign[self.assign == w] = -1
        for c in chosen:
            self.assign[c] = w
            self.value[c] = self.worker_value[w][k, c]
        self.config[w] = k
        self.moves += 1

    def single_moves(self) -> bool:
        improved_any = False
        for _ in range(self.options.max_rounds):
            improved = False
            for w in range(len(self.config)):
                total, k, chosen = self._best_response(w)
                if k >= 0 and total - self._current((w,)) > self.tolerance:
                    self._apply(w, k, chosen)
                    improved = improved_any = True
            if not improved:
                break
        return improved_any

    def _candidates(self, w: int, gains: np.ndarray, fps: np.ndarray) -> np.ndarray:
        """The best configuration of every variant, then the others, by greedy value."""
        d = int(self.tables.worker_device[w])
        prefix = self._prefix_values(gains, fps, self.capacity_of_device[d])
        ranked = [k for k in np.argsort(-prefix, kind="stable").tolist() if prefix[k] > 0]
        first, rest, seen = [], [], set()
        for k in ranked:
            v = self.configs_of_device[d][k][0]
            (rest if v in seen else first).append(k)
            seen.add(v)
        return np.asarray((first + rest)[: self.options.pair_configs], dtype=int)

    def _pair_plans(self, first: int, second: int):
        """Every candidate configuration pair of two workers, scored: (total, rows, masks, clients,
        gains), the gains being each worker's per configuration and client (relevant clients only)."""
        pair = (first, second)
        gains_1, gains_2 = self._gains(first, pair), self._gains(second, pair)
        relevant = np.flatnonzero((gains_1 > 0).any(axis=0) | (gains_2 > 0).any(axis=0))
        if relevant.size == 0:
            return None
        gains_1, gains_2, fps = gains_1[:, relevant], gains_2[:, relevant], self.fps[relevant]
        rows_1, rows_2 = self._candidates(first, gains_1, fps), self._candidates(second, gains_2, fps)
        if rows_1.size == 0 or rows_2.size == 0:
            return None
        shape = (rows_1.size, rows_2.size, relevant.size)
        self.work += int(np.prod(shape))
        a = np.broadcast_to(gains_1[rows_1][:, None, :], shape)
        b = np.broadcast_to(gains_2[rows_2][None, :, :], shape)
        tie = 1e-9 * fps / fps.max()  # larger frame rates first among equals: packs better
        priority = np.where(a > 0, (a - b) / fps + tie, -np.inf)
        take_1, value_1 = _fill(priority, a, fps, self.capacity(first)[rows_1][:, None])
        left = np.where(take_1, 0.0, b)
        take_2, value_2 = _fill(
            np.where(left > 0, left / fps + tie, -np.inf), left, fps, self.capacity(second)[rows_2][None, :]
        )
        return value_1 + value_2, (rows_1, rows_2), (take_1, take_2), relevant, (gains_1, gains_2)

    def _apply_pair(self, first: int, second: int, plans, i: int, j: int, masks=None) -> None:
        """Apply configuration pair (i, j) of `plans`, with its greedy fill or the given client masks."""
        _, (rows_1, rows_2), (take_1, take_2), relevant, _ = plans
        mask_1, mask_2 = masks if masks is not None else (take_1[i, j], take_2[i, j])
        pair = (first, second)
        self.value[np.isin(self.assign, pair)] = 0.0
        self.assign[np.isin(self.assign, pair)] = -1
        self._apply(first, int(rows_1[i]), relevant[mask_1].tolist())
        self._apply(second, int(rows_2[j]), relevant[mask_2].tolist())

    def _pair_move(self, first: int, second: int, exact: bool) -> bool:
        plans = self._pair_plans(first, second)
        if plans is None:
            return False
        total = plans[0]
        i, j = np.unravel_index(int(np.argmax(total)), total.shape)
        best = (float(total[i, j]), int(i), int(j), None)
        packed = self._exact_pair(first, second, plans, best[0]) if exact else None
        if packed is not None:
            best = packed
        if best[0] - self._current((first, second)) <= self.tolerance:
            return False
        self._apply_pair(first, second, plans, best[1], best[2], best[3])
        return True

    def _exact_pair(self, first: int, second: int, plans, lower: float):
        """Pack the most promising configuration pairs exactly, stopping when no bound beats `lower`.

        The greedy fill misses packings where every client fits only in one particular split
        (frame rates as coins); the two-knapsack DP finds them. Pairs are visited by an upper
        bound (fractional knapsack of the better worker's gain per client into both capacities),
        so the DP runs only where it can still win. Returns (value, i, j, (mask_1, mask_2)) or None.
        """
        if self.unit is None or self.options.max_exact_pairs <= 0:
            return None
        _, (rows_1, rows_2), _, relevant, (gains_1, gains_2) = plans
        fps = self.fps[relevant]
        capacity_1, capacity_2 = self.capacity(first)[rows_1], self.capacity(second)[rows_2]
        bound = _pair_bound(gains_1[rows_1], gains_2[rows_2], fps, capacity_1, capacity_2)
        units = self.units[relevant]
        best = None
        for flat in np.argsort(-bound, axis=None, kind="stable")[: self.options.max_exact_pairs].tolist():
            i, j = np.unravel_index(flat, bound.shape)
            if bound[i, j] <= lower + self.tolerance or self.work >= self.options.work_budget:
                break
            values_1 = np.where(gains_1[rows_1[i]] > 0, gains_1[rows_1[i]], -np.inf)
            values_2 = np.where(gains_2[rows_2[j]] > 0, gains_2[rows_2[j]], -np.inf)
            caps = capacity_units(capacity_1[i], self.unit), capacity_units(capacity_2[j], self.unit)
            self.work += relevant.size * (caps[0] + 1) * (caps[1] + 1) // 64
            result = repack_two(values_1, values_2, units, *caps)
            if result is not None and result[0] > lower + self.tolerance:
                lower = result[0]
                best = (result[0], int(i), int(j), (result[1] == 1, result[1] == 2))
        return best

    def pair_moves(self, exact: bool = False) -> bool:
        num_w = len(self.config)
        improved = False
        for first in range(num_w):
            # the greedy fill favours the first worker, so both orders count; exact packing is symmetric
            for second in range(first + 1 if exact else 0, num_w):
                if first == second or self.work >= self.options.work_budget:
                    continue
                improved |= self._pair_move(first, second, exact)
        return improved

    def _snapshot(self):
        return list(self.config), self.assign.copy(), self.value.copy()

    def _restore(self, snapshot) -> None:
        self.config, self.assign, self.value = list(snapshot[0]), snapshot[1].copy(), snapshot[2].copy()

    def kick_moves(self) -> bool:
        """Pair plans that lose value on their own, each followed by single moves of everyone and
        re-packing: one worker's upgrade can pay off only once a third worker re-packs."""
        num_w = len(self.config)
        best_value, best = float(self.value.sum()), None
        for first in range(num_w):
            for second in range(first + 1, num_w):
                if self.work >= self.options.work_budget:
                    break
                base = self._snapshot()
                plans = self._pair_plans(first, second)
                if plans is None:
                    continue
                total = plans[0]
                for flat in np.argsort(-total, axis=None, kind="stable")[: self.options.kicks_per_pair].tolist():
                    i, j = np.unravel_index(flat, total.shape)
                    self._restore(base)
                    self._apply_pair(first, second, plans, int(i), int(j))
                    self.single_moves()
                    if self.repack_pairs():
                        self.single_moves()
                    if float(self.value.sum()) > best_value + self.tolerance:
                        best_value, best = float(self.value.sum()), self._snapshot()
                self._restore(base)
        if best is None:
            return False
        self._restore(best)
        return True

    def start(self) -> None:
        capacities = [self.capacity(w) for w in range(len(self.config))]
        self.config, self.assign = contiguous_start(self.worker_value, capacities, self.fps)
        self.value = np.zeros(self.fps.size)
        for c, w in enumerate(self.assign.tolist()):
            if w >= 0:
                self.value[c] = self.worker_value[w][self.config[w], c]

    def repack_pairs(self) -> bool:
        """Re-pack every pair of busy workers optimally, configurations fixed (`_shoal_repack`)."""
        if self.unit is None:
            return False
        improved = False
        busy = [w for w in range(len(self.config)) if self.config[w] >= 0]
        for index, first in enumerate(busy):
            for second in busy[index + 1 :]:
                pair = (first, second)
                items = np.flatnonzero(np.isin(self.assign, pair) | (self.assign == -1))
                k1, k2 = self.config[first], self.config[second]
                values_1 = self.worker_value[first][k1, items]
                values_2 = self.worker_value[second][k2, items]
                keep = (values_1 > 0) | (values_2 > 0)
                items, values_1, values_2 = items[keep], values_1[keep], values_2[keep]
                caps = (capacity_units(self.capacity(first)[k1], self.unit), capacity_units(self.capacity(second)[k2], self.unit))
                result = repack_two(values_1, values_2, self.units[items], *caps)
                if result is None or result[0] - self._current(pair) <= self.tolerance:
                    continue
                self.value[np.isin(self.assign, pair)] = 0.0
                self.assign[np.isin(self.assign, pair)] = -1
                self._apply(first, k1, items[result[1] == 1].tolist())
                self._apply(second, k2, items[result[1] == 2].tolist())
                improved = True
        return improved

    def descend(self) -> None:
        """Single moves, then pair moves and kicks while they improve (pairs only for few workers)."""
        self.single_moves()
        if len(self.config) > self.options.pair_max_workers:
            return
        for _ in range(self.options.max_rounds):
            if self.work >= self.options.work_budget:
                break
            if self.pair_moves() or self.repack_pairs() or self.pair_moves(exact=True):
                self.single_moves()
            elif not self.kick_moves():
                break

    def run(self, starts: Sequence[Plan] = ()) -> None:
        """Descend from the block start and, for few workers, also from an empty plan and from
        each of `starts`; keep the best."""
        self.start()
        self.descend()
        if len(self.config) > self.options.pair_max_workers:
            return
        others: list[Plan | None] = ([None] if self.options.empty_start else []) + list(starts)
        for plan in others:
            best = self._snapshot()
            self.load_plan(plan)
            self.descend()  # with what is left of the work budget: often single moves only (bounded time)
            if float(best[2].sum()) >= float(self.value.sum()):
                self._restore(best)

    def load_plan(self, plan: Plan | None) -> None:
        """Make `plan` the state (None: the empty plan), keeping only what the model allows.

        Each worker keeps its clients on the configuration worth most for them: the plan's own
        unless another kept one is worth strictly more (a configuration pruned as dominated has
        a kept dominator, worth at least as much). On a configuration, clients it cannot serve,
        or that overflow its capacity (least valuable per frame first), are left unserved. So
        the state is worth at least what the shared model scores the plan at."""
        self.config = [-1] * len(self.config)
        self.assign[:] = -1
        self.value[:] = 0.0
        if plan is None:
            return
        configs, assignment = plan
        for w, config in enumerate(configs):
            clients = np.array([c for c, place in enumerate(assignment) if place is not None and place[0] == w], dtype=int)
            if config is None or clients.size == 0:
                continue
            known = self.configs_of_device[int(self.tables.worker_device[w])]
            own = known.index(config) if config in known else None
            values = self.worker_value[w][:, clients]
            servable = np.where(np.isfinite(values), values, 0.0)  # a client a configuration cannot serve is worth nothing there
            capacity, fps = self.capacity(w), self.fps[clients]
            best: tuple[float, int, list[int]] = (0.0, -1, [])
            for k in ([own] if own is not None else []) + [k for k in range(len(known)) if k != own]:
                total, chosen = self._skip_fill(servable[k], fps, float(capacity[k]))
                if total > best[0] + self.tolerance:
                    best = (total, k, clients[chosen].tolist())
            if best[1] >= 0:
                self._apply(w, best[1], best[2])


def _pair_bound(
    gains_1: np.ndarray, gains_2: np.ndarray, fps: np.ndarray, capacity_1: np.ndarray, capacity_2: np.ndarray
) -> np.ndarray:
    """(n1, n2) upper bound on two workers' gain: each client at its better gain, packed
    fractionally into the summed capacity, and no more than the two fractional bounds apart."""
    both = np.maximum(gains_1[:, None, :], gains_2[None, :, :])
    together = _fractional(both, fps, (capacity_1[:, None] + capacity_2[None, :]))
    apart = _fractional(gains_1, fps, capacity_1)[:, None] + _fractional(gains_2, fps, capacity_2)[None, :]
    return np.minimum(together, apart)


def _fractional(gains: np.ndarray, fps: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Fractional knapsack value along the last axis (the LP bound of a 0-1 knapsack)."""
    order = np.argsort(-(gains / fps), axis=-1, kind="stable")
    sorted_gains = np.take_along_axis(gains, order, axis=-1)
    sorted_fps = fps[order]
    load_before = np.cumsum(sorted_fps, axis=-1) - sorted_fps
    room = np.clip(capacity[..., None] - load_before, 0.0, None)
    share = np.minimum(1.0, room / sorted_fps)
    return (np.clip(sorted_gains, 0.0, None) * share).sum(axis=-1)


def _fill(priority: np.ndarray, gains: np.ndarray, fps: np.ndarray, capacity: np.ndarray):
    """Greedy knapsack along the last axis of (n1, n2, C) arrays: by priority, skipping misfits.

    Returns the chosen mask and the summed gains; `capacity` broadcasts against (n1, n2).
    """
    order = np.argsort(-priority, axis=2, kind="stable")
    gains_sorted = np.take_along_axis(gains, order, axis=2)
    fps_sorted = fps[order]
    limit = np.broadcast_to(capacity * (1 - 1e-9), priority.shape[:2])
    load = np.zeros(priority.shape[:2])
    take_sorted = np.zeros(priority.shape, dtype=bool)
    positive = gains_sorted > 0
    for position in range(priority.shape[2]):
        ok = positive[:, :, position] & (load + fps_sorted[:, :, position] <= limit)
        if not positive[:, :, position].any():
            break  # sorted by priority: nothing with a positive gain follows
        load += np.where(ok, fps_sorted[:, :, position], 0.0)
        take_sorted[:, :, position] = ok
    take = np.zeros(priority.shape, dtype=bool)
    np.put_along_axis(take, order, take_sorted, axis=2)
    return take, (gains_sorted * take_sorted).sum(axis=2)


def solve_shoal(tables: EdgeTables, options: ShoalOptions = ShoalOptions()) -> ShoalResult:
    search = _Search(tables, options)
    if tables.num_clients:
        starts: list[Plan] = []
        if options.annealing_start and tables.num_workers <= options.pair_max_workers:
            from shoal.planner.edge.jellyfish import solve_jellyfish

            annealed = solve_jellyfish(tables, seed=0)
            starts.append((annealed.configs, annealed.assignment))
        search.run(starts)
    configs: list[tuple[int, int] | None] = []
    for w, k in enumerate(search.config):
        d = int(tables.worker_device[w])
        configs.append(search.configs_of_device[d][k] if k >= 0 else None)
    assignment: list[tuple[int, int] | None] = [None] * tables.num_clients
    for c, w in enumerate(search.assign.tolist()):
        if w >= 0:
            d = int(tables.worker_device[w])
            v, k = configs[w]  # type: ignore[misc]
            assignment[c] = (w, int(tables.best_option[c, d, v, k]))
    configs = tighten_batches(tables, configs, assignment)
    configs, assignment = keep_loaded_variants(tables, configs, assignment)
    return ShoalResult(configs, assignment, search.moves, search.work)
