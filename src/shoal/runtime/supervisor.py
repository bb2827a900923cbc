"""Background loops that come back when they die or stall.

The controller and the edge scheduler run as tasks on the server's event loop. Their ticks
catch their own errors, but a loop can still end (a bug that escapes, a cancellation that is
not the server's, a `BaseException`) or hang inside one tick (an await that never returns).
Either way the server would go on answering requests with nobody adjusting the cache,
the replicas or the edge plans, and nothing would say so. A `Supervisor` runs each loop as
a task, runs it again after a crash (the same object: its state, such as the autoscaler's
hold timers, survives; exponential back-off over consecutive quick failures), cancels and
restarts it when its heartbeat goes stale, and counts every restart in
`shoal_background_restarts_total{task}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter

__all__ = ["Heartbeat", "Supervisor"]

logger = logging.getLogger(__name__)


@dataclass
class Heartbeat:
    """What a supervised loop touches once per iteration, so that a hang can be told from a wait."""

    last_beat_s: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last_beat_s = time.monotonic()


@dataclass
class _Loop:
    name: str
    start: Callable[[Heartbeat], Awaitable[None]]
    stall_after_s: float
    task: asyncio.Task | None = None
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    restarts: int = 0
    quick_failures: int = 0  # failures in a row, each after less than STABLE_AFTER_S of running
    started_s: float = 0.0


class Supervisor:
    """Runs named loops; `kill(name)` is the fault-injection hook (a cancellation it did not ask for)."""

    BACKOFF_START_S = 0.1
    BACKOFF_MAX_S = 5.0
    STABLE_AFTER_S = 30.0
    """A loop that ran this long before dying restarts at once, and its back-off starts over."""
    CANCEL_WAIT_S = 5.0
    """How long a stalled loop may take to honour its cancellation before it is abandoned."""

    def __init__(self, registry: CollectorRegistry, *, check_interval_s: float = 0.2) -> None:
        self.check_interval_s = check_interval_s
        self.restarts = Counter(
            "shoal_background_restarts", "Background loops restarted after they ended or stalled", ["task"], registry=registry
        )
        self._loops: dict[str, _Loop] = {}
        self._watch: asyncio.Task | None = None
        self._stopping = False
        # Stalled loops that did not honour their cancellation within CANCEL_WAIT_S: still
        # running, cancelled again (and waited for, boundedly) when the supervisor stops.
        self._abandoned: set[asyncio.Task] = set()

    def add(self, name: str, start: Callable[[Heartbeat], Awaitable[None]], *, stall_after_s: float) -> None:
        """`start(heartbeat)` builds a fresh loop object and runs it; it must call `heartbeat.beat()`
        at least every `stall_after_s` seconds while healthy."""
        loop = _Loop(name, start, stall_after_s)
        self._loops[name] = loop
        self._launch(loop)
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_loops(), name="supervisor")

    def names(self) -> list[str]:
        return sorted(self._loops)

    def restart_count(self, name: str) -> int:
        return self._loops[name].restarts

    def kill(self, name: str) -> bool:
        """Cancel the loop as a crash would end it; the supervisor notices and restarts it.
        False when it is not running (waiting out its back-off)."""
        task = self._loops[name].task
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def stop(self) -> None:
        """Cancel every loop, abandoned ones included, and wait for them at most CANCEL_WAIT_S:
        one that swallows its cancellation must not hold up the server's shutdown for good."""
        self._stopping = True
        tasks = {loop.task for loop in self._loops.values() if loop.task is not None} | self._abandoned
        if self._watch is not None:
            tasks.add(self._watch)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, still_running = await asyncio.wait(tasks, timeout=self.CANCEL_WAIT_S)
        for task in still_running:
            logger.error("background loop %r ignored its cancellation; left behind at shutdown", task.get_name())

    # -- inside -----------------------------------------------------------------------------------
    def _launch(self, loop: _Loop) -> None:
        loop.heartbeat = Heartbeat()
        loop.started_s = time.monotonic()
        loop.task = asyncio.create_task(loop.start(loop.heartbeat), name=loop.name)

    def _backoff_s(self, loop: _Loop) -> float:
        """0 after a run that lasted STABLE_AFTER_S, else 0.1 s doubling per quick failure in a row."""
        if time.monotonic() - loop.started_s >= self.STABLE_AFTER_S:
            loop.quick_failures = 0
            return 0.0
        loop.quick_failures += 1
        return min(self.BACKOFF_MAX_S, self.BACKOFF_START_S * 2 ** (loop.quick_failures - 1))

    async def _watch_loops(self) -> None:
        waiting: dict[str, float] = {}  # loop -> when it may start again
        while not self._stopping:
            await asyncio.sleep(self.check_interval_s)
            now = time.monotonic()
            for loop in self._loops.values():
                if loop.name in waiting:
                    if now >= waiting[loop.name]:
                        del waiting[loop.name]
                        self._launch(loop)
                    continue
                task = loop.task
                if task is None:
                    continue
                if task.done():
                    reason = _ending(task)
                elif now - loop.heartbeat.last_beat_s > loop.stall_after_s:
                    reason = f"no heartbeat for {now - loop.heartbeat.last_beat_s:.1f} s"
                    task.cancel()
                    # a loop that swallows its cancellation must not hold up the others
                    await asyncio.wait({task}, timeout=self.CANCEL_WAIT_S)
                    if not task.done():
                        reason += "; it ignored its cancellation and is left running"
                        self._abandoned.add(task)
                        task.add_done_callback(self._abandoned.discard)
                    now = time.monotonic()  # the wait may have taken seconds
                else:
                    continue
                loop.restarts += 1
                self.restarts.labels(loop.name).inc()
                delay_s = self._backoff_s(loop)
                error = task.exception() if task.done() and not task.cancelled() else None
                logger.error("background loop %r ended (%s); restarting it in %.1f s", loop.name, reason, delay_s, exc_info=error)
                waiting[loop.name] = now + delay_s


def _ending(task: asyncio.Task) -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return "returned" if error is None else f"{type(error).__name__}: {error}"
