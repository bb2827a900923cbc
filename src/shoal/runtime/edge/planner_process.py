"""The edge planner in a process of its own, so that planning never holds the server's GIL.

The planner is pure and CPU-bound (up to ~0.4 s at 4-8 workers). On a thread it would hold the
GIL in 5 ms slices while requests wait: measured with benchmarks/edge_planner_loop_lag.py on
4 x 32 instances, the event loop's p99 lag was 2.2-3.1 ms with the planner on a thread and
0.11-0.24 ms with this process. A `multiprocessing` pool of one is used rather than
`concurrent.futures` because a plan that hangs, or one abandoned by a cancelled caller, must
be stoppable: `Pool.terminate` kills the process, and the next plan starts a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from multiprocessing.pool import Pool

from shoal.planner.edge import EdgeInstance, EdgePlan, plan_edge

__all__ = ["PlannerDiedError", "PlannerProcess"]

logger = logging.getLogger(__name__)


def _import_planner() -> None:
    import shoal.planner.edge  # noqa: F401  (imported once at start, not on the first plan)


class PlannerDiedError(RuntimeError):
    """The planner process exited in the middle of a plan (killed, out of memory)."""


class PlannerProcess:
    LIVENESS_POLL_S = 0.25
    """How often a plan in flight checks that the process is still there: the pool replaces a
    dead worker and loses its task without a word, so neither of the plan's callbacks would
    ever run and the caller would wait out the whole `timeout_s`."""

    def __init__(self, *, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        self._pool: Pool | None = None
        self._known_pids: frozenset[int] = frozenset()  # the pool's processes when the last plan was sent
        self._starting = asyncio.Lock()  # binds to the event loop on first use (Python >= 3.10)

    async def start(self) -> None:
        """Start the process if it is not running; spawning (a fork/exec) runs off the event loop."""
        async with self._starting:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                creating = asyncio.ensure_future(asyncio.to_thread(context.Pool, 1, _import_planner))
                try:
                    self._pool = await asyncio.shield(creating)
                except asyncio.CancelledError:  # the process starts anyway: keep it for the next plan
                    creating.add_done_callback(self._adopt)
                    raise

    def _adopt(self, creating: asyncio.Future) -> None:
        if creating.cancelled() or creating.exception() is not None:
            return
        if self._pool is None:
            self._pool = creating.result()
        else:
            creating.result().terminate()

    async def plan(self, instance: EdgeInstance, policy: str) -> EdgePlan:
        """`plan_edge(instance, policy)` in the planner process. A plan that runs past
        `timeout_s`, or whose caller is cancelled, takes the process down with it."""
        if self._pool is not None and self._known_pids and self._worker_pids() != self._known_pids:
            self.stop()  # its process died between plans: its replacement may never read a task
        await self.start()
        self._known_pids = self._worker_pids()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[EdgePlan] = loop.create_future()

        def deliver(settle, value) -> None:  # from the pool's result thread
            try:
                loop.call_soon_threadsafe(lambda: answer.done() or settle(value))
            except RuntimeError:  # the event loop is closed: nobody is waiting
                pass

        workers = self._worker_pids()
        self._pool.apply_async(plan_edge, (instance, policy), callback=lambda plan: deliver(answer.set_result, plan),
                               error_callback=lambda error: deliver(answer.set_exception, error))
        deadline = loop.time() + self.timeout_s
        try:
            while not answer.done():
                left_s = deadline - loop.time()
                if left_s <= 0:
                    logger.error("edge planning ran past %.0f s; restarting the planner process", self.timeout_s)
                    self.stop()
                    raise TimeoutError(f"edge planning ran past {self.timeout_s:g} s")
                await asyncio.wait({answer}, timeout=min(self.LIVENESS_POLL_S, left_s))
                if not answer.done() and self._worker_pids() != workers:
                    logger.error("the edge planner process exited during a plan; starting a new one")
                    self.stop()
                    raise PlannerDiedError("the edge planner process exited during a plan")
            return answer.result()
        except asyncio.CancelledError:
            self.stop()
            raise

    def _worker_pids(self) -> frozenset[int]:
        """The pool's process ids (a dead worker is replaced by one with a new id); empty where
        this Python's Pool keeps them elsewhere, and then only `timeout_s` ends a lost plan."""
        return frozenset(process.pid for process in getattr(self._pool, "_pool", None) or ())

    def stop(self) -> None:
        """Kill the process (a plan in flight is abandoned). Safe to call twice.

        The processes are killed here; the pool's own teardown runs on a thread of its own,
        because it can block for good: a worker killed while it waited for a task dies holding
        the task queue's lock, which `Pool.terminate` then waits for (measured: the server's event
        loop frozen). At worst that thread is left waiting."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in getattr(pool, "_pool", None) or ():
            if process.is_alive():
                process.kill()
        threading.Thread(target=pool.terminate, name="edge-planner-teardown", daemon=True).start()
