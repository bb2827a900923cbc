"""Deadline-aware dynamic batching: which queued requests to run next, and when.

Pure: the caller passes the deadlines of the queued requests (earliest first), the current
time and a batch-latency model; the decision says how many requests at the head cannot meet
their deadline any more (to be answered "dropped"), how many to run now, or how long to wait
for more. The runtime's worker loop and the simulator call the same function.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["ADMITTED_WINDOW", "LOOP_GATE_MIN_START_MS", "SATURATED_LOOP_BUSY_SHARE", "BatchDecision", "admission_finish_ms", "admitted_per_ms", "decide_batch", "loop_gate_refusal_probability"]


@dataclass(frozen=True)
class BatchDecision:
    num_expired: int
    """Requests at the head of the queue (earliest deadlines) that cannot finish in time even alone."""
    batch_size: int
    """Requests to run now, taken after the expired ones; 0 means wait."""
    wait_ms: float = 0.0
    """When batch_size is 0 and requests are queued: how long waiting for more is still safe."""


def decide_batch(
    deadlines_ms: Sequence[float],
    now_ms: float,
    batch_latency_ms: Callable[[int], float],
    max_batch_size: int,
    *,
    max_queue_delay_ms: float = 0.0,
    expiry_latency_ms: Callable[[int], float] | None = None,
) -> BatchDecision:
    """Pick the largest batch whose predicted finish meets the earliest deadline in it.

    `deadlines_ms` are in queue order, which is deadline order within one priority level. The
    expired are counted from the head (a queue holding several levels removes its expired ones
    elsewhere first); a batch of b is checked against the earliest of its b deadlines, which in a
    deadline-ordered queue is its first (a batch sized by a more urgent level's loose deadline
    made the tight ones of the level after it late).
    With `max_queue_delay_ms` > 0 a partial batch may wait for more arrivals, but only as long
    as the earliest deadline still allows running a full batch afterwards.

    `expiry_latency_ms` (default: `batch_latency_ms`) decides which requests are past saving.
    The runtime sizes batches with a pessimistic (tail) latency but expires with the expected
    one: expiring with the tail would drop everything after a slow spell, no batch would run,
    and the tail, learnt only from batches that run, would never come down.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    num_expired = 0
    single_ms = (expiry_latency_ms or batch_latency_ms)(1)
    while num_expired < len(deadlines_ms) and now_ms + single_ms > deadlines_ms[num_expired]:
        num_expired += 1
    remaining = len(deadlines_ms) - num_expired
    if remaining == 0:
        return BatchDecision(num_expired, 0)
    # earliest_by_size[b - 1]: the earliest deadline among the first b (the head's when sorted)
    earliest_by_size = list(itertools.accumulate(deadlines_ms[num_expired : num_expired + min(remaining, max_batch_size)], min))
    batch_size = 1
    for candidate in range(min(remaining, max_batch_size), 1, -1):
        if now_ms + batch_latency_ms(candidate) <= earliest_by_size[candidate - 1]:
            batch_size = candidate
            break
    if max_queue_delay_ms > 0 and batch_size == remaining and remaining < max_batch_size:
        slack_ms = earliest_by_size[-1] - now_ms - batch_latency_ms(max_batch_size)
        wait_ms = min(max_queue_delay_ms, slack_ms)
        if wait_ms > 0:
            return BatchDecision(num_expired, 0, wait_ms)
    return BatchDecision(num_expired, batch_size)


def admission_finish_ms(
    num_queued: int,
    busy_remaining_ms: Sequence[float],
    batch_latency_ms: Callable[[int], float],
    max_batch_size: int,
    *,
    arrivals_per_ms: float = 0.0,
) -> float:
    """Predicted time from now until a newly queued request finishes, dispatched as shoal's
    batchers dispatch: each busy worker, as it frees (`busy_remaining_ms`, one entry per worker,
    0 when idle), takes the next `max_batch_size` requests from the head of the queue; the new
    request is behind the `num_queued` ahead of it. Its own batch also takes whatever arrives
    (`arrivals_per_ms`, the rate requests are being admitted) before it starts. Idle workers
    share out what is queued now.

    Used at admission, so that a request which cannot make its deadline is refused at once
    (429) instead of holding a queue slot only to be dropped later, and by variant selection.

    Why turns and the batch's growth: under load a request that heads the queue rarely runs
    alone, since the worker it waits for also takes the requests that came after it. Measured
    on the heavy demo variant at 2x overload (2 workers, `benchmarks/results/serve-admission-greedy/`):
    requests that the old prediction (the queue shared out over all the workers) had run alone
    ran in batches of 4 (median), so its error tail (98th percentile 27 ms at SLO 50) became the
    margin admission added to every request. Why idle workers share: a batcher sizes its batch
    to the earliest deadline in it (`decide_batch`) and the next idle worker takes the rest at
    once, so when deadlines are tight the queue spreads over the idle workers (and when they are
    loose the request makes its deadline either way); charging it the whole queue as one batch
    raised the misses from 1.05% to 3.70% of the frames in the 64-worker edge simulation
    (docs/experiments.md). `inf` with no workers, or when none ever frees.
    """
    if not busy_remaining_ms:
        return math.inf
    batch = max(1, max_batch_size)
    free_in_ms = sorted(max(0.0, busy) for busy in busy_remaining_ms)
    ahead = max(0, num_queued)
    full_batch_ms = batch_latency_ms(batch)
    idle = sum(1 for free in free_in_ms if free == 0.0)
    if idle:
        if ahead < idle * batch:
            return batch_latency_ms(min(batch, -(-(ahead + 1) // idle)))
        ahead -= idle * batch
        free_in_ms = sorted(free_in_ms[idle:] + [full_batch_ms] * idle)
    if math.isinf(free_in_ms[0]) or math.isinf(full_batch_ms):
        return math.inf  # a worker or a batch that never ends (no latency model)
    full_batches_ahead, ahead_in_own_batch = divmod(ahead, batch)
    # A worker far behind the others (a long batch of another variant) misses turns: step turn
    # by turn while the spread exceeds a full batch (as long as its lead lasts, not the queue)...
    while full_batches_ahead and free_in_ms[-1] - free_in_ms[0] > full_batch_ms:
        bisect.insort(free_in_ms, free_in_ms.pop(0) + full_batch_ms)
        full_batches_ahead -= 1
    # ...then every worker frees again before the last one's first turn, so the turns go round
    # in the same order: the k-th full batch ahead is a whole number of rounds after its worker.
    rounds, worker = divmod(full_batches_ahead, len(free_in_ms))
    start_ms = free_in_ms[worker] + rounds * full_batch_ms
    own_batch = min(batch, ahead_in_own_batch + 1 + int(max(0.0, arrivals_per_ms) * start_ms))
    return start_ms + batch_latency_ms(own_batch)


ADMITTED_WINDOW = 32
"""How many recent admissions `admitted_per_ms` is taken over: enough to smooth Poisson
arrivals, few enough to follow a change of load within a few batches."""


def admitted_per_ms(recent_admissions_ms: Sequence[float], now_ms: float) -> float:
    """The rate requests have been admitted lately (per ms), from the times of the last few
    admissions (oldest first): the intervals they span over the time from the first of them to
    now, so that a pause lowers it at once (and a lone admission says nothing yet: 0)."""
    if len(recent_admissions_ms) < 2:
        return 0.0
    return (len(recent_admissions_ms) - 1) / max(1.0, now_ms - recent_admissions_ms[0])


SATURATED_LOOP_BUSY_SHARE = 0.7
"""Below this share of its time wanting a CPU the event loop is not the bottleneck, however late it runs."""

LOOP_GATE_MIN_START_MS = 0.5
"""The ramp never starts earlier: an idle loop's timers already run 0.1-0.3 ms late."""


def loop_gate_refusal_probability(loop_lag_ms: float, max_loop_lag_ms: float, loop_busy_share: float) -> float:
    """Share of arriving requests to refuse, unread, while the frontend's event loop runs
    `loop_lag_ms` late and wants a CPU `loop_busy_share` of the time: none while it is not
    saturated (busy under `SATURATED_LOOP_BUSY_SHARE`) or up to a third of `max_loop_lag_ms`
    late (`LOOP_GATE_MIN_START_MS` at least), then rising linearly to all at `max_loop_lag_ms`
    (three times that at least).

    A ramp, not a step: with a step the loop swings between refusing everything and taking
    everything in full, and each swing back piles up requests that wait in the sockets (measured
    at 14,000 req/s of a light model, SLO 50 ms, the gate's first version: a step at 5 ms kept 876
    req/s of goodput, a ramp from 1 to 3 ms 2,845-3,246, ramps from 1.5 to 4 and 2 to 5 ms
    2,113-2,336; `benchmarks/results/serve-loop-gate/NOTES.md`). The busy share keeps the gate out
    of a loop that is late only in bursts: on a heavy model at its peak (a quarter of a core)
    196 KB requests arriving together make the loop a few milliseconds late now and then, and
    the lag alone refused 1.0-1.3% of them.
    """
    if loop_busy_share < SATURATED_LOOP_BUSY_SHARE:
        return 0.0
    start_ms = max(LOOP_GATE_MIN_START_MS, max_loop_lag_ms / 3.0)
    end_ms = 3.0 * start_ms
    if loop_lag_ms <= start_ms:
        return 0.0
    if loop_lag_ms >= end_ms:
        return 1.0
    return (loop_lag_ms - start_ms) / (end_ms - start_ms)
