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

A transfer shorter than `min_informative_s` cannot be timed (a millisecond of event-loop
jitter halves or doubles it), but it still bounds the rate from below: the bits left within
that time. Lower bounds newer than the latest timed transfer raise the estimate; they never
lower it. A client that sends only tiny frames would stay at a stale low estimate, so
`probe_bytes` tells it how much padding to add to a frame to learn more, at most once per
`probe_interval_s`, each unanswered probe twice as large (the caller checks that the SLO
leaves room for it).

A frame still unacknowledged is evidence too: if it has been on its way longer than the
estimate allows, its transfer will take at least that long, so the estimate is capped at its
bits over the time so far (`on_send` registers it). This catches a falling link one frame
earlier than the acknowledgement would.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BandwidthEstimator", "FrameSend", "frame_to_send"]


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
        min_informative_s: float = 0.004,
        probe_interval_s: float = 1.0,
        max_mbps: float = 10_000.0,
    ):
        self.initial_mbps = initial_mbps
        self.window = window
        self.horizon_s = horizon_s
        self.min_informative_s = min_informative_s
        self.probe_interval_s = probe_interval_s
        self._last_informative_s: float | None = None
        self._probe_scale = 1.0
        self.max_mbps = max_mbps
        self._samples: collections.deque[_Sample] = collections.deque(maxlen=window)
        self._rtts_ms: collections.deque[float] = collections.deque(maxlen=20)
        self._last_ack_s: float | None = None
        self._last_estimate_mbps = initial_mbps
        self._probe_pending_until_s: float | None = None
        self._lower_bounds: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)
        self._unacked: collections.deque[tuple[float, float]] = collections.deque()  # (sent_s, bits), in send order

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

    def on_send(self, size_bytes: int, sent_s: float) -> None:
        """A frame was handed to the uplink (optional: enables the in-flight cap)."""
        self._unacked.append((sent_s, size_bytes * 8.0))

    def on_ack(self, size_bytes: int, sent_s: float, acked_s: float) -> None:
        """A frame of `size_bytes` queued at `sent_s` was acknowledged at `acked_s`."""
        while self._unacked and self._unacked[0][0] <= sent_s:
            self._unacked.popleft()
        rtt_s = self.min_rtt_ms / 1000.0
        started_s = sent_s + rtt_s if self._last_ack_s is None else max(sent_s + rtt_s, self._last_ack_s)
        self._last_ack_s = acked_s if self._last_ack_s is None else max(self._last_ack_s, acked_s)
        transfer_s = acked_s - started_s
        if transfer_s < self.min_informative_s:
            self._lower_bounds.append((acked_s, size_bytes * 8.0 / self.min_informative_s / 1e6))
            if size_bytes * 8 >= 0.5 * self._probe_bits():
                self._probe_scale = min(64.0, self._probe_scale * 2.0)  # the probe was too small to time
            return
        self._probe_scale = 1.0
        self._last_informative_s = acked_s
        self._samples.append(_Sample(acked_s, size_bytes * 8.0, transfer_s))

    def _probe_bits(self) -> float:
        """A frame this large takes twice the informative time at the current estimate."""
        return 2 * self.min_informative_s * self._last_estimate_mbps * 1e6 * self._probe_scale

    def probe_bytes(self, frame_bytes: int, now_s: float) -> int:
        """Padding that would make a frame of `frame_bytes` an informative transfer, if the last
        informative one is older than `probe_interval_s`; else 0."""
        if self._last_informative_s is not None and now_s - self._last_informative_s < self.probe_interval_s:
            return 0
        if self._probe_pending_until_s is not None and now_s < self._probe_pending_until_s:
            return 0
        missing = int(self._probe_bits() / 8) - frame_bytes
        if missing <= 0:
            return 0
        self._probe_pending_until_s = now_s + self.probe_interval_s / 4
        return missing

    def probe_due(self, now_s: float) -> bool:
        """Whether to send a frame although no input size fits the estimate (the caller sends
        its smallest): nothing is in flight, no transfer was timed within `probe_interval_s`,
        and no such probe went out within it. Without it a client that skips every frame sends
        nothing, learns nothing, and keeps the estimate of a dip's worst moment after the link
        has come back."""
        if self._unacked:
            return False
        if self._last_informative_s is not None and now_s - self._last_informative_s < self.probe_interval_s:
            return False
        if self._probe_pending_until_s is not None and now_s < self._probe_pending_until_s:
            return False
        self._probe_pending_until_s = now_s + self.probe_interval_s
        return True

    def forget(self, sent_s: float) -> None:
        """A frame sent at `sent_s` was answered without an acknowledgement (an error before the
        server read it whole): it is no longer in flight, and must not cap the estimate."""
        self._unacked = collections.deque(entry for entry in self._unacked if entry[0] != sent_s)

    def estimate_mbps(self, now_s: float) -> float:
        recent = [s for s in self._samples if now_s - s.at_s <= self.horizon_s]
        if recent:
            bits = sum(s.bits for s in recent)
            seconds = sum(s.transfer_s for s in recent)
            latest = recent[-2:]
            latest_mbps = sum(s.bits for s in latest) / sum(s.transfer_s for s in latest) / 1e6
            self._last_estimate_mbps = min(self.max_mbps, bits / seconds / 1e6, latest_mbps)
        newest_timed = self._samples[-1].at_s if self._samples else float("-inf")
        bounds = [mbps for at_s, mbps in self._lower_bounds if at_s > newest_timed and now_s - at_s <= self.horizon_s]
        if bounds and max(bounds) > self._last_estimate_mbps:
            self._last_estimate_mbps = min(self.max_mbps, max(bounds))
        if self._unacked:
            sent_s, bits = self._unacked[0]
            started_s = sent_s + self.min_rtt_ms / 1000.0
            if self._last_ack_s is not None:
                started_s = max(started_s, self._last_ack_s)
            waited_s = now_s - started_s
            if waited_s > self.min_informative_s and bits / waited_s / 1e6 < self._last_estimate_mbps:
                return bits / waited_s / 1e6  # not remembered: the ack will tell the real rate
        return self._last_estimate_mbps


@dataclass(frozen=True)
class FrameSend:
    """What goes out for one frame once its size is chosen (`shoal.planner.edge.backoff`)."""

    input_size_px: int
    """0: the frame is skipped."""
    upload_ms: float
    """Predicted at the estimate, the probe padding included."""
    padding_bytes: int
    link_probe: bool
    """No size met the SLO, but the frame goes out at the smallest size so that its
    acknowledgement times the link (`BandwidthEstimator.probe_due`)."""


def frame_to_send(
    estimator: BandwidthEstimator,
    *,
    chosen_size_px: int,
    chosen_upload_ms: float,
    slack_ms: float,
    smallest_size_px: int,
    frame_bytes: Callable[[int], int],
    estimate_mbps: float,
    adaptive: bool,
    now_s: float,
    max_message_bytes: int,
) -> FrameSend:
    """The size, padding and predicted upload of one frame: a link probe in place of a skip, or
    probe padding where the SLO leaves room for it (never past `max_message_bytes`, what the
    server accepts). One function for the live client and the simulator, so that the simulator
    probes as the client does. `adaptive`: the client follows plans (a pinned or per-query
    client neither probes nor pads)."""
    size_px, upload_ms = chosen_size_px, chosen_upload_ms
    link_probe = size_px == 0 and adaptive and estimator.probe_due(now_s)
    if link_probe:
        size_px = smallest_size_px
    if size_px == 0:
        return FrameSend(0, 0.0, 0, False)
    size_bytes = frame_bytes(size_px)
    if link_probe:  # the chosen upload was for no frame at all
        upload_ms = size_bytes * 8 / 1000.0 / estimate_mbps
    padding = estimator.probe_bytes(size_bytes, now_s) if adaptive and not link_probe else 0
    padding = max(0, min(padding, max_message_bytes - size_bytes))
    if padding and padding * 8 / 1000.0 / estimate_mbps > slack_ms:
        padding = 0  # no room for a probe in this frame's SLO
    return FrameSend(size_px, upload_ms + padding * 8 / 1000.0 / estimate_mbps, padding, link_probe)
