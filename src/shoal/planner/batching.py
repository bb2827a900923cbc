"""Deadline-aware dynamic batching: which queued requests to run next, and when.

Pure: the caller passes the deadlines of the queued requests (earliest first), the current
time and a batch-latency model; the decision says how many requests at the head cannot meet
their deadline any more (to be answered "dropped"), how many to run now, or how long to wait
for more. The runtime's worker loop and the simulator call the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["LOOP_GATE_MIN_START_MS", "SATURATED_LOOP_BUSY_SHARE", "BatchDecision", "admission_finish_ms", "decide_batch", "loop_gate_refusal_probability"]


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

    `deadlines_ms` must be sorted ascending (earliest deadline first). Because the batch is taken
    from the head, its earliest deadline is its first one, so one check covers the whole batch.
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
    earliest_ms = deadlines_ms[num_expired]
    batch_size = 1
    for candidate in range(min(remaining, max_batch_size), 1, -1):
        if now_ms + batch_latency_ms(candidate) <= earliest_ms:
            batch_size = candidate
            break
    if max_queue_delay_ms > 0 and batch_size == remaining and remaining < max_batch_size:
        slack_ms = earliest_ms - now_ms - batch_latency_ms(max_batch_size)
        wait_ms = min(max_queue_delay_ms, slack_ms)
        if wait_ms > 0:
            return BatchDecision(num_expired, 0, wait_ms)
    return BatchDecision(num_expired, batch_size)


def admission_finish_ms(
    num_queued: int,
    busy_remaining_ms: float,
    batch_latency_ms: Callable[[int], float],
    max_batch_size: int,
    num_workers: int,
) -> float:
    """Predicted time from now until a newly queued request finishes.

    The queue ahead of it drains in full batches spread over the workers, after the batch that
    is running now (`busy_remaining_ms`, 0 when a worker is idle). Used at admission so that a
    request which cannot make its deadline is refused at once (429) instead of holding a queue
    slot only to be dropped later.
    """
    workers = max(1, num_workers)
    per_round = max(1, max_batch_size * workers)
    full_rounds_ahead = num_queued // per_round
    # The rest of the queue and this request are shared by all the workers: its own batch holds
    # its share, not the whole remainder (with 64 workers, 200 queued items are batches of ~4).
    own_batch = min(max_batch_size, -(-(num_queued % per_round + 1) // workers))
    return busy_remaining_ms + full_rounds_ahead * batch_latency_ms(max_batch_size) + batch_latency_ms(own_batch)


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
