"""A minimal discrete-event engine: a clock and a heap of timed callbacks.

Own code rather than simpy: the simulator needs only "call f at time t" and a clock that the
shared components (`EmulatedLink`, `BandwidthEstimator`) can read, and a plain heap keeps
a million events per minute of simulated time cheap.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

__all__ = ["Engine"]


class Engine:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self.events_run = 0

    def clock(self) -> float:
        return self.now

    def at(self, time_s: float, action: Callable[[], None]) -> None:
        """Run `action` at `time_s` (never in the past: earlier times run now)."""
        heapq.heappush(self._queue, (max(time_s, self.now), next(self._sequence), action))

    def after(self, delay_s: float, action: Callable[[], None]) -> None:
        self.at(self.now + max(0.0, delay_s), action)

    def run(self, until_s: float) -> None:
        while self._queue and self._queue[0][0] <= until_s:
            time_s, _, action = heapq.heappop(self._queue)
            self.now = time_s
            action()
            self.events_run += 1
        self.now = max(self.now, until_s)
