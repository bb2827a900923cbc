"""How loaded the server's event loop is: how late it runs its callbacks, and how much of the
time its thread wants a CPU.

One monitor per event loop. Everything that serves on that loop (the models' scheduler, the
overload gate, a workflow's scheduler beside them) reads the same monitor: the readings describe
the loop, not whoever asks, and two monitors on one loop would only add a second timer and make
the gauges alternate between two near-equal readings.
"""

from __future__ import annotations

import asyncio
import os
import time

from shoal.runtime.metrics import ServingMetrics

__all__ = ["LoopMonitor", "monotonic_ms"]


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0


def _open_schedstat() -> int | None:
    """A descriptor of the calling thread's /proc schedstat (Linux), or None."""
    try:
        return os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return None


def _thread_demand_s(schedstat_fd: int | None) -> float:
    """Seconds the thread whose schedstat `schedstat_fd` reads has run on a CPU or waited in the
    run queue for one; without it, the calling thread's CPU time (`time.thread_time`).

    Why the waiting too: on a machine whose cores the workers keep busy, a loop that always has
    work waits for a core part of the time, and its CPU time alone would read below saturation.
    (A pread of the open descriptor: ~1.4 us, where opening the file each time took ~11 us.)"""
    if schedstat_fd is not None:
        try:
            running_ns, waiting_ns = os.pread(schedstat_fd, 128, 0).split()[:2]
            return (int(running_ns) + int(waiting_ns)) / 1e9
        except (OSError, ValueError):
            pass
    return time.thread_time()


class LoopMonitor:
    """Readings of one event loop, kept by `run` (a task on that loop) and read by anyone.

    `lag_ms`: how late a 10 ms timer fires, smoothed (the time a new request waits for the
    loop's attention). `busy_share`: the share of the time the loop's thread wanted a CPU, on one
    or waiting for one, smoothed faster (whether the loop itself is the bottleneck, or only busy
    in bursts). Both stay 0 until `run` has taken a reading."""

    LAG_SMOOTHING = 0.2
    BUSY_SMOOTHING = 0.5
    """Faster than the lag's: the overload gate waits for the busy share to read saturated."""

    def __init__(self, metrics: ServingMetrics | None = None):
        self.metrics = metrics
        self.lag_ms = 0.0
        self.busy_share = 0.0
        # The current reading: when its timer is due, and since when and from what CPU demand of
        # the loop's thread (_thread_demand_s) it measures (see load).
        self._timer_due_ms = float("inf")
        self._interval_ms = 10.0
        self._reading_since_ms = 0.0
        self._reading_demand_s = 0.0
        self._schedstat_fd: int | None = None
        self.running = False

    async def run(self, interval_s: float = 0.01) -> None:
        """Take a reading every `interval_s` until cancelled. Run it on the loop it measures, once."""
        if self.running:
            raise RuntimeError("this loop monitor is already running: one monitor per event loop")
        self.running = True
        self._interval_ms = interval_s * 1000.0
        self._schedstat_fd = _open_schedstat()  # of this thread: the loop's
        try:
            while True:
                # time.monotonic, not loop.time(): uvloop's clock counts whole milliseconds.
                self._reading_demand_s, self._reading_since_ms = _thread_demand_s(self._schedstat_fd), monotonic_ms()
                self._timer_due_ms = self._reading_since_ms + self._interval_ms
                await asyncio.sleep(interval_s)
                now_ms = monotonic_ms()
                self.lag_ms += self.LAG_SMOOTHING * (max(0.0, now_ms - self._timer_due_ms) - self.lag_ms)
                self.busy_share += self.BUSY_SMOOTHING * (self._busy_share_since_reading(now_ms) - self.busy_share)
                if self.metrics is not None:
                    self.metrics.loop_lag.set(self.lag_ms / 1000.0)
                    self.metrics.loop_busy_share.set(self.busy_share)
        finally:
            self.running = False
            self._timer_due_ms = float("inf")  # no live readings from a monitor that stopped
            if self._schedstat_fd is not None:
                os.close(self._schedstat_fd)
                self._schedstat_fd = None

    def load(self) -> tuple[float, float]:
        """(lag in ms, busy share) of the event loop as seen right now: the smoothed values, or,
        once the monitor's timer is overdue by a whole interval, the lag so far and the share of
        the time since its last reading that the loop's thread wanted a CPU, when those are more.

        Why not only the smoothed values: a loop in the middle of a long pass over hundreds of
        ready sockets (the first moments of a flash crowd) has not run the timer yet, so they
        learn of the pass only after it, and the next pass is longer still; a request handled
        during the pass can see the timer overdue and the thread busy all along. Only after a
        whole interval overdue, so that a single short stretch of work on an idle loop (a burst
        of large requests, a metrics scrape) does not read as saturation."""
        now_ms = monotonic_ms()
        overdue_ms = now_ms - self._timer_due_ms
        if overdue_ms <= self._interval_ms:
            return self.lag_ms, self.busy_share
        return max(self.lag_ms, overdue_ms), max(self.busy_share, self._busy_share_since_reading(now_ms))

    def _busy_share_since_reading(self, now_ms: float) -> float:
        """Share of the time since the last reading that the loop's thread wanted a CPU."""
        demand_ms = (_thread_demand_s(self._schedstat_fd) - self._reading_demand_s) * 1000.0
        return min(1.0, demand_ms / max(1e-3, now_ms - self._reading_since_ms))
