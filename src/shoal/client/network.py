"""Network emulation without root: bandwidth traces and a token-bucket uplink in the client.

Jellyfish shaped each client's uplink with `tc tbf rate <trace value>Mbit burst 1540`, one
trace value per second, every client starting at its own index and looping. `EmulatedLink`
does the same inside the client's process: a message may leave only when the bucket holds its
bits; tokens arrive at the trace's current rate and the bucket holds at most `burst_bits`.
Messages are serialised in order (a frame waits for the frames before it, as in a real
queue), then spend `propagation_ms` in flight. The bucket depth defaults to 0 rather than the
original's 1540 bytes: that burst is free after every idle gap, and with raw frames of 6 to
400 kbit it would make a 16 px frame look twice as fast as the trace rate, which no estimator
working from frame timings can tell from a faster link. The caller awaits `transmit` before it writes
the bytes to the real socket, so the server sees each frame when the emulated network would
have delivered it.

With root, real shaping is possible instead (see docs/edge.md): a network namespace per client
and `tc qdisc add dev <veth> root tbf rate <r>mbit burst 1540 latency 10s`, changed every second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shoal.core.errors import InvalidInputError

__all__ = ["BUILTIN_TRACES", "BandwidthTrace", "EmulatedLink", "load_trace", "trace_offsets"]

BUILTIN_TRACES = {"lte": ("lte.txt", 1.0), "wifi": ("wifi.txt", 1.0), "synthetic": ("synthetic.txt", 20.0)}
"""Name -> (file shipped in shoal/client/traces, seconds per value)."""


@dataclass(frozen=True)
class BandwidthTrace:
    """A looping piecewise-constant bandwidth: `values_mbps[i]` holds for `step_s` seconds."""

    name: str
    values_mbps: tuple[float, ...]
    step_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.values_mbps:
            raise InvalidInputError(f"trace {self.name!r} has no values")
        if any(not math.isfinite(v) or v <= 0 for v in self.values_mbps):
            raise InvalidInputError(f"trace {self.name!r}: every bandwidth must be a positive number of Mbit/s")
        if not self.step_s > 0:
            raise InvalidInputError(f"trace {self.name!r}: step_s must be positive")

    @property
    def duration_s(self) -> float:
        return len(self.values_mbps) * self.step_s

    def mbps_at(self, t_s: float) -> float:
        return self.values_mbps[int(math.floor(t_s / self.step_s)) % len(self.values_mbps)]

    def scaled(self, factor: float) -> "BandwidthTrace":
        return BandwidthTrace(f"{self.name}x{factor:g}", tuple(v * factor for v in self.values_mbps), self.step_s)

    def bits_between(self, start_s: float, end_s: float) -> float:
        """Bits the trace carries from `start_s` to `end_s` (trace time)."""
        t, bits = start_s, 0.0
        while t < end_s:
            step_end = min(end_s, (math.floor(t / self.step_s) + 1) * self.step_s)
            bits += self.mbps_at(t) * 1e6 * (step_end - t)
            t = step_end
        return bits

    def finish_s(self, start_s: float, bits: float) -> float:
        """When `bits` sent from `start_s` at the trace's rate have all left (fluid model)."""
        t, remaining = start_s, bits
        for _ in range(100_000):
            step_end = (math.floor(t / self.step_s) + 1) * self.step_s
            rate_bps = self.mbps_at(t) * 1e6
            if remaining <= rate_bps * (step_end - t):
                return t + remaining / rate_bps
            remaining -= rate_bps * (step_end - t)
            t = step_end
        raise InvalidInputError(f"trace {self.name!r}: {bits:.0f} bits do not fit in 100000 trace steps")


def load_trace(spec: str) -> BandwidthTrace:
    """A built-in trace name (lte, wifi, synthetic) or a file of Mbit/s values, one per second."""
    if spec in BUILTIN_TRACES:
        file_name, step_s = BUILTIN_TRACES[spec]
        text = resources.files("shoal.client").joinpath("traces", file_name).read_text()
        name = spec
    else:
        path = Path(spec)
        if not path.is_file():
            raise InvalidInputError(f"trace {spec!r} is neither a built-in trace ({', '.join(BUILTIN_TRACES)}) nor a file")
        try:
            text, step_s, name = path.read_text(), 1.0, path.stem
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidInputError(f"trace {spec!r} cannot be read as text ({type(error).__name__})") from None
    try:
        values = tuple(float(token) for token in text.split())
    except ValueError as error:
        raise InvalidInputError(f"trace {spec!r}: every value must be a number of Mbit/s ({error})") from None
    return BandwidthTrace(name, values, step_s)


class EmulatedLink:
    """One direction of one client's link: token bucket at the trace's rate, then propagation.

    `offset_s` is where in the trace the link starts (Jellyfish: a random index per client).
    `clock` returns seconds; it is injectable so that tests and the simulator can drive time.
    """

    def __init__(
        self,
        trace: BandwidthTrace,
        *,
        offset_s: float = 0.0,
        propagation_ms: float = 5.0,
        burst_bits: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if propagation_ms < 0 or burst_bits < 0:
            raise InvalidInputError("propagation_ms and burst_bits must be >= 0")
        self.trace = trace
        self.offset_s = offset_s
        self.propagation_ms = propagation_ms
        self.burst_bits = burst_bits
        self.clock = clock
        self.started_s = clock()
        self._free_at_s = self.started_s  # when the last queued message has left the bucket

    def restart(self, now_s: float | None = None) -> None:
        """Start the trace over at `now_s` (the link's offset in it stays): a client calls it as
        its first frame goes out, so that every client compared on one trace meets the same
        stretch of it with the same frame, however long its connection and registration took."""
        now = self.clock() if now_s is None else now_s
        self.started_s = now
        self._free_at_s = max(self._free_at_s, now)

    def trace_time_s(self, now_s: float | None = None) -> float:
        return (self.clock() if now_s is None else now_s) - self.started_s + self.offset_s

    def bandwidth_mbps(self, now_s: float | None = None) -> float:
        """The rate the link has now (what a perfect estimator would report)."""
        return self.trace.mbps_at(self.trace_time_s(now_s))

    def backlog_ms(self, now_s: float | None = None) -> float:
        """How long a message queued now waits before its first bit leaves (the emulator's
        truth; a client cannot know it and uses `queued_bits` with its own estimate)."""
        now = self.clock() if now_s is None else now_s
        return max(0.0, self._free_at_s - now) * 1000.0

    def queued_bits(self, now_s: float | None = None) -> float:
        """Bits handed to the link that have not left yet (what a real client reads from its
        socket's send queue, e.g. SIOCOUTQ)."""
        now = self.clock() if now_s is None else now_s
        if self._free_at_s <= now:
            return 0.0
        offset = self.started_s - self.offset_s
        return self.trace.bits_between(now - offset, self._free_at_s - offset)

    def reserve(self, size_bytes: int, now_s: float | None = None) -> float:
        """Queue a message; returns the time (clock seconds) at which it arrives at the far end."""
        now = self.clock() if now_s is None else now_s
        start = max(now, self._free_at_s)
        idle_s = max(0.0, now - self._free_at_s)
        # Tokens saved while idle (at most one burst) let the first bits leave at once.
        credit_bits = min(self.burst_bits, self.trace.mbps_at(self.trace_time_s(start)) * 1e6 * idle_s)
        bits = max(0.0, size_bytes * 8 - credit_bits)
        offset = self.started_s - self.offset_s
        finish = self.trace.finish_s(start - offset, bits) + offset
        self._free_at_s = finish
        return finish + self.propagation_ms / 1000.0

    async def transmit(self, size_bytes: int) -> float:
        """Wait until a message of `size_bytes` has crossed the link; returns its arrival time."""
        arrival = self.reserve(size_bytes)
        delay = arrival - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        return arrival


def trace_offsets(trace: BandwidthTrace, clients: int, seed: int) -> Sequence[float]:
    """Deterministic, distinct start points in the trace for `clients` clients."""
    import random

    rng = random.Random(seed)
    return [rng.uniform(0.0, trace.duration_s) for _ in range(clients)]
