"""Upload-bandwidth estimation from the client's own transfers.

The server acknowledges every frame the moment it has received it. If the link was idle when
the frame was queued, the frame's transfer took `ack - sent - min_rtt`; if it queued behind the
previous frame, its bits started leaving when the previous one had arrived, and the gap between
the two acknowledgements is its transfer time (the packet-train estimate). Either way one
sample is `bits / transfer_s`.

The estimate is the bits of the recent samples over their summed transfer times: a
size-weighted harmonic mean. It follows drops at once (one slow transfer dominates the sum),
is robust to a lucky fast sample, and lets tiny frames, whose timing is mostly event-loop
noise, count for little beside large ones. Samples older than `horizon_s` are forgotten so that
the estimate describes the link now. On top, the estimate never exceeds the rate of the
latest two transfers: fast down, slow up, because a frame sent on a stale high estimate
misses its SLO while one sent on a low estimate only loses a little accuracy.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

__all__ = ["BandwidthEstimator"]


@dataclass
class _Sample:
    at_s: float
    bits: float
    transfer_s: float


class BandwidthEstimator:
    def __init__(
        self,
        initial_mbps: float,
        *,
        window: int = 8,
        horizon_s: float = 2.0,
        min_transfer_s: float = 0.0005,
        max_mbps: float = 10_000.0,
    ):
        self.initial_mbps = initial_mbps
        self.window = window
        self.horizon_s = horizon_s
        self.min_transfer_s = min_transfer_s
        self.max_mbps = max_mbps
        self._samples: collections.deque[_Sample] = collections.deque(maxlen=window)
        self._rtts_ms: collections.deque[float] = collections.deque(maxlen=20)
        self._last_ack_s: float | None = None
        self._last_estimate_mbps = initial_mbps

    @property
    def rtt_samples(self) -> int:
        return len(self._rtts_ms)

    @property
    def min_rtt_ms(self) -> float:
        return min(self._rtts_ms) if self._rtts_ms else 0.0

    def on_rtt(self, rtt_ms: float) -> None:
        """A round trip of a message too small to take transfer time (ping/pong)."""
        if rtt_ms >= 0:
            self._rtts_ms.append(rtt_ms)

    def on_ack(self, size_bytes: int, sent_s: float, acked_s: float) -> None:
        """A frame of `size_bytes` queued at `sent_s` was acknowledged at `acked_s`."""
        rtt_s = self.min_rtt_ms / 1000.0
        started_s = sent_s + rtt_s if self._last_ack_s is None else max(sent_s + rtt_s, self._last_ack_s)
        self._last_ack_s = acked_s if self._last_ack_s is None else max(self._last_ack_s, acked_s)
        transfer_s = max(self.min_transfer_s, acked_s - started_s)
        self._samples.append(_Sample(acked_s, size_bytes * 8.0, transfer_s))

    def estimate_mbps(self, now_s: float) -> float:
        recent = [s for s in self._samples if now_s - s.at_s <= self.horizon_s]
        if recent:
            bits = sum(s.bits for s in recent)
            seconds = sum(s.transfer_s for s in recent)
            latest = recent[-2:]
            latest_mbps = sum(s.bits for s in latest) / sum(s.transfer_s for s in latest) / 1e6
            self._last_estimate_mbps = min(self.max_mbps, bits / seconds / 1e6, latest_mbps)
        return self._last_estimate_mbps
