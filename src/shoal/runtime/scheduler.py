"""Admission to the per-variant queues, and the loop that feeds each worker deadline-aware batches.

Requests wait in one bounded queue per variant (`shoal.runtime.variant_queue`), ordered by
priority then deadline, admitted only when their predicted finish meets their deadline. Each worker
runs one loop that pulls from the queues of the variants it has loaded (pull-based, so idle
workers balance load by themselves), asks `shoal.planner.batching.decide_batch` what to run,
answers expired requests with an explicit deadline error and runs the rest as one batch.

With `batches_ahead` (1 by default) a worker's loop chooses and sends its next batch shortly
before the running one is predicted to end, sized for when it will start; the worker runs it
as soon as the running one is done, without waiting for the server's event loop to read the
reply and send the next (which, on a busy loop, takes milliseconds per batch).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

import numpy as np

from shoal.planner.batching import admission_finish_ms, decide_batch
from shoal.runtime.batch_block import BATCH_SLOTS
from shoal.runtime.errors import DeadlineExceededError, ModelNotReadyError, OverloadedError, ServingError, WorkerFailedError
from shoal.runtime.loop_monitor import LoopMonitor, monotonic_ms
from shoal.runtime.metrics import ServingMetrics
from shoal.runtime.variant_queue import QueuedItem, VariantQueue, priority_rank
from shoal.runtime.worker_handle import WorkerHandle

__all__ = ["Scheduler", "monotonic_ms"]  # monotonic_ms: the clock of every deadline

logger = logging.getLogger(__name__)


@dataclass(eq=False)  # a booking is found on a worker's books by identity, never by its times
class _SentBatch:
    """A batch sent to a worker and not answered yet."""

    latency_ms: float
    """Its expected time on the worker (`VariantQueue.batch_latency_ms`)."""
    finish_ms: float
    """When it is expected to be done: its start (now, or when the batch sent before it ends) plus its latency."""
    started: bool = False
    """Its task took its first step. One cancelled before that (a shutdown that cancels every
    task) never enters `_run_batch`, whose cleanup then falls to `Scheduler._batch_task_done`."""


class Scheduler:
    LOADING_POLL_S = 0.005
    """How often the batcher of a loading worker, with nothing it may take, looks again."""
    SEND_AHEAD_LEAD_MS = 2.0
    """How long before the running batch's predicted end (plus the loop's lag) the next one is
    chosen and sent: enough to copy its inputs and send its message, while requests that arrive
    in the meantime still make it into the batch."""
    SEND_AHEAD_MAX_LOOP_BUSY = 0.75
    """The event loop's busy share (`LoopMonitor.busy_share`) from which nothing is sent ahead. Measured
    at 2x overload (benchmarks/results/serve-send-ahead/): ~0.35 on the heavy demo variant, whose
    workers are the bottleneck and gain from it; 0.95-1.0 on the light one, whose loop is and loses."""

    def __init__(self, metrics: ServingMetrics, *, max_queue_delay_ms: float = 0.0, batches_ahead: int = 1,
                 loop_monitor: LoopMonitor | None = None):  # fmt: skip
        """`batches_ahead`: batches a worker may be sent beyond the one it runs (0 or 1: a
        worker's block has two slots, `BATCH_SLOTS`). `loop_monitor`: the readings of the event
        loop this scheduler runs on (its lag enters every prediction; a saturated loop stops
        send-ahead), which whoever owns the loop runs; a new, idle one by default."""
        if not 0 <= batches_ahead < BATCH_SLOTS:
            raise ValueError(f"batches_ahead must be between 0 and {BATCH_SLOTS - 1}, got {batches_ahead}")
        self.metrics = metrics
        self.batches_ahead = batches_ahead
        self.loop_monitor = loop_monitor if loop_monitor is not None else LoopMonitor(metrics)
        self.max_queue_delay_ms = max_queue_delay_ms
        self.queues: dict[str, VariantQueue] = {}
        self.workers: list[WorkerHandle] = []
        self._wakeups: dict[str, asyncio.Event] = {}  # per worker: a request it may take was queued
        self._batch_ends: dict[str, asyncio.Event] = {}  # per worker: a batch of it was answered
        self._sent: dict[str, list[_SentBatch]] = {}  # per worker, in the order it runs them
        self._unsent_items: dict[str, int] = {}  # per variant: items taken into a batch whose message is not out yet
        self._last_finish_ms: dict[str, float] = {}  # per worker: when its last batch was answered
        self._tasks: dict[str, asyncio.Task] = {}
        self._batch_tasks: set[asyncio.Task] = set()
        self._closed = False

    # -- registration ---------------------------------------------------------------------------
    def add_queue(self, queue: VariantQueue) -> None:
        self.queues[queue.key] = queue
        self.metrics.watch_queue(queue.key, queue.__len__, lambda: queue.slowdown, lambda: queue.tail_slowdown)

    def attach_worker(self, worker: WorkerHandle) -> None:
        self.workers = [w for w in self.workers if w.worker_id != worker.worker_id] + [worker]
        self._wakeups[worker.worker_id] = asyncio.Event()
        self._batch_ends[worker.worker_id] = asyncio.Event()
        self._sent[worker.worker_id] = []
        old = self._tasks.pop(worker.worker_id, None)
        if old:
            old.cancel()
        self._tasks[worker.worker_id] = asyncio.create_task(self._worker_loop(worker), name=f"batcher-{worker.worker_id}")

    def workers_for(self, key: str) -> list[WorkerHandle]:
        return [worker for worker in self.workers if worker.alive and key in worker.loaded_variants]

    # -- admission ------------------------------------------------------------------------------
    def predicted_finish_ms(self, key: str, now_ms: float, priority: int = 0) -> float:
        """Predicted completion delay of a request for `key` and `priority` admitted now (inf when
        nothing serves it).

        The drain of the part of the queue that runs before it (every item of its priority level
        or a more urgent one: a level-1 request is not held to the backlog of unstated ones it
        overtakes) plus the event loop's lag: a saturated loop delays the answer too (socket,
        parsing, encoding), by about its lag."""
        queue = self.queues[key]
        workers = self.workers_for(key)
        if not workers:
            return float("inf")
        # A worker that is loading another variant leaves the queue to the others while it
        # loads (how long is not known), if there are any (`_most_urgent_queue`).
        serving = [worker for worker in workers if not worker.loading] or workers
        busy_ms = [max(0.0, worker.busy_until_ms - now_ms) for worker in serving]
        return self.loop_monitor.lag_ms + admission_finish_ms(
            queue.items_ahead_of(priority), busy_ms, queue.batch_latency_ms, queue.max_batch_size, arrivals_per_ms=queue.admission_rate_per_ms(now_ms)
        )

    def admission_margin_ms(self, key: str, now_ms: float, priority: int = 0) -> float:
        """What admission adds to the predicted finish of a request for `key` queued now: the
        error learnt for its priority (`VariantQueue.admission_error_ms`), except for a request
        that heads the queue (nothing of its level or a more urgent one queued).

        Most of the error is time spent waiting behind other requests, which a request at the
        head does not do: the next worker to free takes it, and that worker's batch is sized to
        its deadline (`decide_batch`). Charging it the margin refused requests with the queue
        empty, and the workers then idled at 2x overload (measured: 8-9% of their time on the
        heavy demo variant, 3-4% without the margin there); admitting it also keeps fresh errors
        coming after a slow spell."""
        queue = self.queues[key]
        heads_the_queue = queue.items_ahead_of(priority) == 0  # less urgent items queued do not count
        return 0.0 if heads_the_queue and self._next_free_worker_takes(key) else queue.admission_error_ms(now_ms, priority)

    def _next_free_worker_takes(self, key: str) -> bool:
        """A worker for `key` is not loading and has nothing queued for any other variant it holds,
        so it takes `key`'s queue as soon as it is free (rather than serving another variant).

        A loading worker does not count even where it serves `key` (`_left_to_others`): its
        batches run slower beside the load, an error the margin is there to cover."""
        for worker in self.workers_for(key):
            if not worker.loading and not any(self.queues[other].items for other in worker.loaded_variants if other != key and other in self.queues):
                return True
        return False

    def submit(self, key: str, tensor: np.ndarray, deadline_ms: float, priority: int = 0, admit_by_ms: float | None = None) -> asyncio.Future:
        """Queue one item; raises OverloadedError when it cannot be admitted.

        `admit_by_ms` (default: the deadline) is what the predicted finish must meet to be
        admitted; setting it before the deadline leaves headroom for prediction error.
        """
        if self._closed:
            raise _shutting_down()
        queue = self.queues[key]
        now = monotonic_ms()
        # A full queue takes a request only in place of a less urgent one (the last queued, which
        # runs last): background work filling the queue must not lock out a more urgent level.
        displaced = None
        if len(queue) >= queue.capacity:
            displaced = queue.items[-1] if queue.items and queue.items[-1].sort_key[0] > priority_rank(priority) else None
            if displaced is None:
                raise OverloadedError(f"queue of {key!r} is full ({queue.capacity} requests)", retry_after_s=self._retry_after_s(queue))
        predicted_finish_ms = now + self.predicted_finish_ms(key, now, priority)
        if predicted_finish_ms + self.admission_margin_ms(key, now, priority) > (deadline_ms if admit_by_ms is None else admit_by_ms):
            raise OverloadedError(
                f"{key!r} cannot answer within the deadline at the current load", retry_after_s=self._retry_after_s(queue)
            )
        if displaced is not None:
            queue.items.pop()
            _fail(displaced.future, OverloadedError(
                f"queue of {key!r} is full ({queue.capacity} requests) and a more urgent request took this one's place; retry later",
                retry_after_s=self._retry_after_s(queue)))  # fmt: skip
        future = asyncio.get_running_loop().create_future()
        queue.push(QueuedItem(priority=priority, deadline_ms=deadline_ms, arrival_ms=now, predicted_finish_ms=predicted_finish_ms, tensor=tensor, future=future))
        for worker in self.workers_for(key):
            self._wakeups[worker.worker_id].set()
        return future

    @staticmethod
    def _retry_after_s(queue: VariantQueue) -> float:
        drain_ms = len(queue) / max(1, queue.max_batch_size) * queue.batch_latency_ms(queue.max_batch_size)
        return max(1.0, round(drain_ms / 1000.0, 1))

    # -- the batching loop ----------------------------------------------------------------------
    def _most_urgent_queue(self, worker: WorkerHandle) -> VariantQueue | None:
        best = None
        for key in worker.loaded_variants:
            queue = self.queues.get(key)
            if queue and queue.items and (best is None or queue.items[0] < best.items[0]) and not self._left_to_others(worker, key):
                best = queue
        return best

    def _left_to_others(self, worker: WorkerHandle, key: str) -> bool:
        """While `worker` loads a variant, it leaves `key` to another worker that holds it and is
        not loading: the load (on a thread beside the worker's batches, seconds for a large
        model) slows its batches and the batches disturb the load's warm-up profile. A variant
        only loading workers hold is still served (with one worker, the default, it is all)."""
        return bool(worker.loading) and any(other is not worker and not other.loading for other in self.workers_for(key))

    async def _worker_loop(self, worker: WorkerHandle) -> None:
        wakeup, batch_end = self._wakeups[worker.worker_id], self._batch_ends[worker.worker_id]
        sent = self._sent[worker.worker_id]
        while worker.alive and not self._closed:
            now = monotonic_ms()
            if sent:
                # Another batch only ahead of the last one, only close to that one's end (a batch
                # chosen early misses the requests that arrive before it would start), and only
                # while the event loop has time to spare: sending ahead makes smaller batches,
                # more of them, each with its share of the loop's work, which a saturated loop
                # cannot give (a light model's server: ~20% less goodput at 2x when it did).
                if len(sent) > self.batches_ahead or self.loop_monitor.busy_share >= self.SEND_AHEAD_MAX_LOOP_BUSY:
                    await _wait(batch_end)
                    continue
                look_in_ms = sent[-1].finish_ms - now - self.SEND_AHEAD_LEAD_MS - self.loop_monitor.lag_ms
                if look_in_ms > 0:
                    await _wait(batch_end, look_in_ms)
                    continue
            queue = self._most_urgent_queue(worker)
            if queue is None and worker.loading:
                # What it left to the others may be its own again when the load is done, which
                # nothing signals (WorkerManager loads on one worker at a time once serving).
                await asyncio.sleep(self.LOADING_POLL_S)
                continue
            if queue is None:
                await _wait(wakeup)
                continue
            # A batch sent ahead starts when the one before it ends.
            start_ms = max(now, sent[-1].finish_ms) if sent else now
            # Several priority levels: the queue is in deadline order only within each, so what
            # expired is taken from wherever it is (from the head, by `decide_batch`, otherwise).
            expired_elsewhere = (
                queue.take_expired(start_ms + self.loop_monitor.lag_ms + queue.batch_latency_ms(1)) if queue.holds_several_levels else []
            )
            window = queue.items[: queue.max_batch_size * 2]
            # As at admission: the answer reaches the client only when the event loop gets to it.
            decision = decide_batch(
                [item.deadline_ms for item in window], start_ms + self.loop_monitor.lag_ms, queue.tail_batch_latency_ms, queue.max_batch_size,
                max_queue_delay_ms=self.max_queue_delay_ms, expiry_latency_ms=queue.batch_latency_ms,
            )
            expired = expired_elsewhere + queue.take(decision.num_expired)
            for item in expired:
                _fail(item.future, DeadlineExceededError(f"dropped: deadline cannot be met ({queue.key} was {now - item.arrival_ms:.1f} ms in queue)"))
            # The worst mispredictions: had they run alone then, they would have finished this late.
            queue.observe_finished_items(expired, start_ms + self.loop_monitor.lag_ms + queue.batch_latency_ms(1), now)
            if decision.batch_size == 0:
                if decision.wait_ms > 0:
                    await _wait(wakeup, decision.wait_ms)
                continue
            batch = queue.take(decision.batch_size)
            if batch:  # else every one was cancelled meanwhile
                self._send_batch(worker, queue, batch, now, start_ms)

    def _send_batch(self, worker: WorkerHandle, queue: VariantQueue, batch: list[QueuedItem], now_ms: float, start_ms: float) -> None:
        """Book the batch on the worker (what admission and the other loops see at once) and run it."""
        sent = self._sent[worker.worker_id]
        # Alone on the machine's cores, a worker may use the threads the idle others leave (not
        # while its own load needs one, nor for a batch sent ahead: the others may be busy by then).
        burst = not sent and worker.burst_threads > 0 and not worker.loading and all(
            other is worker or not other.alive or (other.busy_until_ms == 0.0 and not other.loading) for other in self.workers
        )
        latency_ms = queue.batch_latency_ms(len(batch))
        booking = _SentBatch(latency_ms, start_ms + latency_ms)
        sent.append(booking)
        worker.busy_until_ms = booking.finish_ms
        self._unsent_items[queue.key] = self._unsent_items.get(queue.key, 0) + len(batch)
        task = asyncio.create_task(self._run_batch(worker, queue, batch, booking, now_ms, burst), name=f"batch-{worker.worker_id}")
        self._batch_tasks.add(task)
        task.add_done_callback(functools.partial(self._batch_task_done, worker, queue, batch, booking))

    def _batch_task_done(self, worker: WorkerHandle, queue: VariantQueue, batch: list[QueuedItem], booking: _SentBatch,
                         task: asyncio.Task) -> None:  # fmt: skip
        self._batch_tasks.discard(task)
        if booking.started:  # `_run_batch` answered its requests and cleared its books
            return
        self._unsent_items[queue.key] -= len(batch)
        for item in batch:
            _fail(item.future, WorkerFailedError("server stopped before this request was sent to a worker"))
        self._batch_done(worker, booking)

    async def _run_batch(self, worker: WorkerHandle, queue: VariantQueue, batch: list[QueuedItem], booking: _SentBatch,
                         sent_ms: float, burst: bool) -> None:  # fmt: skip
        booking.started = True
        self._unsent_items[queue.key] -= len(batch)
        try:
            # The batch's message goes out in this task, a pass after the batch was chosen: an
            # unload of the variant from this worker (scaling down, eviction, the controller) may
            # have gone out in between, and the worker would fail the batch. Nothing is awaited
            # from this check until the message is sent (a slot is free: the books hold at most
            # BATCH_SLOTS batches), so it cannot go stale.
            if worker.alive and queue.key not in worker.loaded_variants:
                self._give_back(queue, batch)
                return
            # The requests are answered as the outputs arrive; this coroutine still resumes before
            # their handlers run (WorkerChannel), so the finish below holds no response work.
            outputs, compute_ms = await worker.run(queue.key, [item.tensor for item in batch], burst,
                                                   lambda outputs, compute_ms: _answer(batch, outputs, compute_ms, sent_ms))  # fmt: skip
            finished_ms = monotonic_ms()
            _answer(batch, outputs, compute_ms, sent_ms)  # a worker that could not answer on arrival
            # On the worker from when it was sent, or, sent ahead, from when the batch before it
            # was answered; never less than its own compute time (a loop that read both replies
            # late would see the second come a moment after the first).
            started_ms = max(sent_ms, self._last_finish_ms.get(worker.worker_id, 0.0))
            # The requests were woken with the outputs, after this coroutine: what is learnt from
            # the batch waits until their handlers ran (call_soon queues it behind them), since
            # it is no part of their answers (~0.13 ms per request at low load on a slow 2-core
            # machine, and a batch's worth of answers sooner under load). The worker is freed below.
            asyncio.get_running_loop().call_soon(self._learn_from_batch, worker, queue, batch, burst, started_ms, finished_ms, compute_ms)
        except asyncio.CancelledError:
            for item in batch:
                _fail(item.future, WorkerFailedError("server stopped while this request was running"))
            raise
        except ServingError as error:
            for item in batch:
                _fail(item.future, error)
            return
        except Exception as error:  # a model error fails this batch, not the worker loop
            logger.exception("batch on %s failed", queue.key)
            for item in batch:
                _fail(item.future, WorkerFailedError(f"inference failed: {error}"))
            return
        finally:
            self._batch_done(worker, booking)

    def _learn_from_batch(self, worker: WorkerHandle, queue: VariantQueue, batch: list[QueuedItem], burst: bool,
                          started_ms: float, finished_ms: float, compute_ms: float) -> None:  # fmt: skip
        """The batch-time and admission-error models, and the metrics, from a batch that ran."""
        if not burst:
            # The batch-time model describes narrow batches, the ones that run under load,
            # where admission needs it; a wide batch's speed would make it optimistic there.
            queue.observe_batch(len(batch), max(finished_ms - started_ms, compute_ms))
        # The prediction included the loop's lag for the answer to leave; so does the finish.
        queue.observe_finished_items(batch, finished_ms + self.loop_monitor.lag_ms, finished_ms)
        self.metrics.child(self.metrics.worker_busy_seconds, worker.worker_id).inc(max(0.0, finished_ms - started_ms) / 1000.0)
        for priority in {item.priority for item in batch}:
            self.metrics.child(self.metrics.admission_error, queue.key, str(priority)).set(queue.admission_error_ms(finished_ms, priority) / 1000.0)
        self.metrics.batch(queue.key, len(batch), compute_ms)

    def _give_back(self, queue: VariantQueue, batch: list[QueuedItem]) -> None:
        """Return a batch that was not sent to its places at the head of its queue, for the
        workers that still hold the variant. (If none does, the unload that took it from the
        last one answers them: `fail_unserved`.)"""
        if self._closed:  # close() has emptied the queues already: nothing would take it
            for item in batch:
                _fail(item.future, _shutting_down())
            return
        self.requeue(queue.key, batch)

    def requeue(self, key: str, items: list[QueuedItem]) -> None:
        """Queue items taken from elsewhere (another worker's queue) in their places in `key`'s
        queue, admitted already; the workers that hold `key` are woken."""
        self.queues[key].requeue(items)
        for worker in self.workers_for(key):
            self._wakeups[worker.worker_id].set()

    def withdraw(self, key: str, futures: list[asyncio.Future]) -> None:
        """Take the items of `futures` out of `key`'s queue, for a request that gave them up (refused
        part-way through its items, or its client went away). Left queued until a batch took and
        skipped them, they counted against the queue's capacity and lengthened the drain admission
        predicted for every request after them: one refused 8-item request could shed the next ones."""
        queue = self.queues.get(key)
        if queue is not None and futures:
            queue.withdraw(set(futures))

    def fail_unserved(self, key: str) -> None:
        """Answer every request queued for `key` with ModelNotReadyError if no worker holds the
        variant any more: nothing would take them. Called by whatever unloads it from a worker
        (`WorkerManager`), once the unload is done."""
        queue = self.queues.get(key)
        if queue is None or self.workers_for(key):
            return
        for item in queue.take(len(queue)):
            _fail(item.future, ModelNotReadyError(f"variant {key!r} was unloaded while this request waited; load it again (POST /v2/repository/models/{key}/load)"))

    def waiting(self, key: str) -> int:
        """Requests for `key` not yet sent to a worker: queued, or taken into a batch whose
        message is not out yet (an unload now would race them)."""
        queue = self.queues.get(key)
        return (len(queue) if queue is not None else 0) + self._unsent_items.get(key, 0)

    def _batch_done(self, worker: WorkerHandle, booking: _SentBatch) -> None:
        """Take the batch off the worker's books; if it was the one running, the one sent after it
        (if any) starts now."""
        sent = self._sent.get(worker.worker_id, [])
        if booking not in sent:  # the worker was replaced (a restart) and its books with it
            return
        now_ms = monotonic_ms()
        running = sent[0] is booking  # else one sent ahead failed before it ran (its slot, its message)
        if running:  # the batch sent after it starts now; a failed one sent ahead says nothing of that
            self._last_finish_ms[worker.worker_id] = now_ms
        sent.remove(booking)
        if sent:
            if running:
                sent[0].finish_ms = now_ms + sent[0].latency_ms
            worker.busy_until_ms = sent[-1].finish_ms
        else:
            worker.busy_until_ms = 0.0
        event = self._batch_ends.get(worker.worker_id)
        if event is not None:
            event.set()

    # -- shutdown -------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop batching; every queued request is answered with an error."""
        self._closed = True
        for event in (*self._wakeups.values(), *self._batch_ends.values()):
            event.set()
        for queue in self.queues.values():
            for item in queue.take(len(queue)):
                _fail(item.future, _shutting_down())
        tasks = [*self._tasks.values(), *self._batch_tasks]
        if tasks:
            # Let running batches finish and answer; cancel whatever is still going after that.
            _, still_running = await asyncio.wait(tasks, timeout=10.0)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _wait(event: asyncio.Event, timeout_ms: float | None = None) -> None:
    """Until `event` is set (cleared first) or `timeout_ms` passed. A timer, not `wait_for`,
    which would make a task per wait on the batching loop's path."""
    event.clear()
    timer = None if timeout_ms is None else asyncio.get_running_loop().call_later(timeout_ms / 1000.0, event.set)
    try:
        await event.wait()
    finally:
        if timer is not None:
            timer.cancel()


def _shutting_down() -> OverloadedError:
    """What a request refused or left queued by a closing scheduler is told."""
    return OverloadedError("server is shutting down", retry_after_s=5.0)


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def _answer(batch: list[QueuedItem], outputs: np.ndarray, compute_ms: float, started_ms: float) -> None:
    """Each request of a batch gets its output row, its queue time, the batch's compute time and
    size. Called from the worker's reply callback where it can (the requests then resume one
    event-loop pass sooner), else once the batch's coroutine resumes; an answered or cancelled
    request is left alone. Outputs with a row too few raise (IndexError): the batch fails."""
    for index, item in enumerate(batch):
        if not item.future.done():
            item.future.set_result((outputs[index], started_ms - item.arrival_ms, compute_ms, len(batch)))
