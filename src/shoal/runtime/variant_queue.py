"""One variant's queue of admitted requests, and what it has learnt from the batches it ran.

The queue is ordered by priority, then deadline. Its latency model is the variant's profile
scaled by how slow batches have really run lately, and it learns how much later than
admission predicted its requests finish; the scheduler (`shoal.runtime.scheduler`) admits with
both and sizes batches with the first.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shoal.planner.batching import ADMITTED_WINDOW, admitted_per_ms
from shoal.runtime.rolling import RollingPercentile

__all__ = ["QueuedItem", "VariantQueue"]

_sequence = itertools.count()

UNSTATED_PRIORITY_RANK = 2**63
"""Where a request that states no priority level (0) queues: after every stated level."""


def priority_rank(priority: int) -> int:
    """Triton's order (its schedule-policy extension): level 1 runs first, then 2, and so on;
    0, no level stated, after every stated one (as Triton's default level set to the lowest)."""
    return priority if priority > 0 else UNSTATED_PRIORITY_RANK


@dataclass(order=True)
class QueuedItem:
    sort_key: tuple = field(init=False, repr=False)
    priority: int
    """Triton's priority level: 1 runs first, then 2, ...; 0 (none stated) after all of them."""
    deadline_ms: float
    arrival_ms: float = field(compare=False)
    predicted_finish_ms: float = field(compare=False)
    """When admission expected it to finish (monotonic ms): compared with the real finish."""
    tensor: np.ndarray = field(compare=False, repr=False)
    future: asyncio.Future = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        self.sort_key = (priority_rank(self.priority), self.deadline_ms, next(_sequence))



class VariantQueue:
    """Bounded queue of one variant, ordered by (priority level, deadline, arrival).

    Its latency model is the profile scaled by how slow batches have really been lately: the
    profile is taken on a quiet worker at load time, and on a shared machine the same batch can
    later take several times longer. Deadlines are only as good as this prediction.
    """

    SLOWDOWN_SMOOTHING = 0.2
    TAIL_WINDOW = 64
    """Recent batches whose measured-over-profiled ratios give the tail the dispatcher plans for."""
    TAIL_DECILE = 9
    """The 90th percentile of those ratios (`RollingPercentile`: numpy's quantile cost ~20 us per
    batch, 4-5% of the frontend's CPU under load)."""
    FINISH_ERROR_WINDOW = 256
    """Recent requests whose finish, against admission's prediction, calibrates admission."""
    FINISH_ERROR_PERCENTILE = 98
    """Of those errors, the one admission adds. Chosen on the heavy demo variant at 2x overload
    (benchmarks/results/serve-admission-error/): the 99th held the client's p99 within the SLO in
    four of five quick sweeps but cost ~7% of peak goodput; the 95th kept the peak and left the
    p99 over the SLO in three of four sweeps."""
    FINISH_ERROR_STALE_MS = 2000.0
    """A margin that no new error refreshed for this long lapses: a variant that admission
    refuses runs no batches and learns nothing new, and must not stay refused on what it learnt
    during a burst."""

    def __init__(self, key: str, profile_latency_ms: Callable[[int], float], max_batch_size: int, capacity: int):
        self.key = key
        self.profile_latency_ms = profile_latency_ms
        self.max_batch_size = max_batch_size
        self.capacity = capacity
        self.items: list[QueuedItem] = []
        self.slowdown = 1.0
        self.tail_slowdown = 1.0
        self._recent_ratios = RollingPercentile(self.TAIL_WINDOW)
        # per priority: requests overtaken by more urgent ones finish later than predicted by
        # design, and that must not make admission stricter for the urgent ones
        self._admission_error_ms: dict[int, float] = {}
        self._finish_errors: dict[int, RollingPercentile] = {}
        self._errors_observed_ms: dict[int, float] = {}
        self._admitted_ms: collections.deque[float] = collections.deque(maxlen=ADMITTED_WINDOW)

    def __len__(self) -> int:
        return len(self.items)

    def batch_latency_ms(self, batch_size: int) -> float:
        """The expected batch time: what admission plans the queue's drain with."""
        return self.profile_latency_ms(batch_size) * self.slowdown

    def tail_batch_latency_ms(self, batch_size: int) -> float:
        """A batch time that recent batches rarely exceeded: what a batch must fit before its
        earliest deadline. Sizing with the mean makes about half of the batches dispatched at the
        last moment late, and under overload most batches are dispatched at the last moment.
        (Expiry stays with the mean, see `decide_batch`.)"""
        return self.profile_latency_ms(batch_size) * max(self.slowdown, self.tail_slowdown)

    def observe_batch(self, batch_size: int, wall_ms: float) -> None:
        """Fold one measured batch (from its dispatch, or for one sent ahead from the answer to
        the batch before it, to its answer; IPC included) into the slowdown factors."""
        predicted = self.profile_latency_ms(batch_size)
        if predicted > 0 and predicted != float("inf"):
            ratio = min(20.0, max(0.5, wall_ms / predicted))
            self.slowdown += self.SLOWDOWN_SMOOTHING * (ratio - self.slowdown)
            self._recent_ratios.add(ratio)
            self.tail_slowdown = self._recent_ratios.percentile(10 * self.TAIL_DECILE)

    def observe_finishes(self, errors_ms: list[float], now_ms: float, priority: int = 0) -> None:
        """Fold how much later than admission predicted some requests of one priority finished
        (or, for requests dropped at dequeue, at least how much later) into the margin admission
        adds for that priority: the FINISH_ERROR_PERCENTILE of its last FINISH_ERROR_WINDOW
        errors, never below 0.

        Why: the queue-drain prediction is a mean over batches that, on a shared machine, vary
        by 2x, and under overload nearly every admitted request is admitted at the edge of its
        budget, so the prediction's error tail becomes the answers' latency tail (by shoal's
        clock 48.6-49.2 ms at SLO 50 on the heavy demo variant at 2x, 51.5-70.8 ms at the
        client). Adding the error's tail at admission sheds those requests instead. Requests
        overtaken by later ones with earlier deadlines count as errors too, so a priority that
        mixes very different SLOs learns a wider margin than its shortest ones need."""
        if not errors_ms:
            return
        window = self._finish_errors.setdefault(priority, RollingPercentile(self.FINISH_ERROR_WINDOW))
        window.extend(errors_ms)
        self._errors_observed_ms[priority] = now_ms
        if len(window) >= 20:
            self._admission_error_ms[priority] = max(0.0, window.percentile(self.FINISH_ERROR_PERCENTILE))

    def admission_error_ms(self, now_ms: float, priority: int = 0) -> float:
        """The margin learnt for `priority`, or 0 when nothing was learnt for it in FINISH_ERROR_STALE_MS."""
        if now_ms - self._errors_observed_ms.get(priority, -math.inf) > self.FINISH_ERROR_STALE_MS:
            return 0.0
        return self._admission_error_ms.get(priority, 0.0)

    def observe_finished_items(self, items: list[QueuedItem], finished_ms: float, now_ms: float) -> None:
        """`observe_finishes` for queued items that finished (or would have) at `finished_ms`."""
        by_priority: dict[int, list[float]] = {}
        for item in items:
            by_priority.setdefault(item.priority, []).append(finished_ms - item.predicted_finish_ms)
        for priority, errors_ms in by_priority.items():
            self.observe_finishes(errors_ms, now_ms, priority)

    def push(self, item: QueuedItem) -> None:
        bisect.insort(self.items, item)
        self._admitted_ms.append(item.arrival_ms)

    def requeue(self, items: list[QueuedItem]) -> None:
        """Put back items taken from the queue and not run, in their places (not admitted again)."""
        for item in items:
            bisect.insort(self.items, item)

    def admission_rate_per_ms(self, now_ms: float) -> float:
        """How fast requests have been admitted lately (per ms): how fast a waiting batch grows."""
        return admitted_per_ms(self._admitted_ms, now_ms)

    @property
    def holds_several_levels(self) -> bool:
        """Whether items of more than one priority level are queued: deadline order then holds
        only within each level, and an expired item need not be at the head."""
        return bool(self.items) and self.items[0].sort_key[0] != self.items[-1].sort_key[0]

    def take_expired(self, before_ms: float) -> list[QueuedItem]:
        """Remove the items, wherever they are, whose deadline is before `before_ms` (those not
        answered already). Behind a more urgent level's traffic an expired item was never at
        the head to be dropped: it waited unanswered for as long as that traffic lasted."""
        kept: list[QueuedItem] = []
        expired: list[QueuedItem] = []
        for item in self.items:
            (expired if item.deadline_ms < before_ms else kept).append(item)
        self.items = kept  # still in queue order
        return [item for item in expired if not item.future.done()]

    def items_ahead_of(self, priority: int) -> int:
        """How many queued items run before a request of `priority` queued now, at the latest:
        those of its level and of more urgent ones (within a level an earlier deadline may
        overtake, but admission keeps its promise to the items admitted before)."""
        rank = priority_rank(priority)
        if not self.items or self.items[-1].sort_key[0] <= rank:  # nearly always: one level queued
            return len(self.items)
        return bisect.bisect_right(self.items, (rank, math.inf), key=lambda item: item.sort_key)

    def withdraw(self, futures: set[asyncio.Future]) -> None:
        """Remove the items whose futures are in `futures` (given up by their requests)."""
        self.items = [item for item in self.items if item.future not in futures]

    def take(self, count: int) -> list[QueuedItem]:
        """The first `count` items, less those already answered: a request whose client went away
        (or one of whose other items was refused) cancels its items, and running them would only
        take a batch's room and the worker's time."""
        taken, self.items = self.items[:count], self.items[count:]
        return [item for item in taken if not item.future.done()]
