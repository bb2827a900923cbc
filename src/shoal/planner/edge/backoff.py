"""The client's own decision between two plans: which input size to send now, or none.

Pure, shared by the client daemon (`shoal.client.edge`) and the simulator (`shoal.sim`): the
plan told the client a size, but the plan is up to one interval old, and the client knows more
recent things: its bandwidth estimate and the bits still queued on its uplink. If the assigned
size would now break the SLO, it steps down the ladder of sizes the server offered; if even
the smallest would be late, the frame is skipped (a counted miss, not a silent loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shoal.planner.edge.live import LadderStep, raw_frame_kbits

__all__ = ["SizeChoice", "choose_input_size"]


@dataclass(frozen=True)
class SizeChoice:
    input_size_px: int
    """0: skip this frame."""
    upload_ms: float
    """Predicted time until the frame has left the uplink (queue ahead of it included)."""
    slack_ms: float
    """What the prediction leaves under the SLO (room for a bandwidth probe)."""


def choose_input_size(
    *,
    assigned_size_px: int,
    assigned_server_ms: float,
    ladder: Sequence[LadderStep],
    estimate_mbps: float,
    queued_bits: float,
    min_rtt_ms: float,
    age_ms: float,
    slo_ms: float,
    safety_margin_ms: float = 2.0,
    pinned: bool = False,
    channels: int = 3,
) -> SizeChoice:
    backlog_ms = queued_bits / (estimate_mbps * 1000.0)
    limit_ms = slo_ms - safety_margin_ms

    def predict(size: int, server_ms: float) -> tuple[float, float]:
        upload = backlog_ms + raw_frame_kbits(size, channels) / estimate_mbps
        return age_ms + upload + min_rtt_ms + server_ms, upload

    total, upload = predict(assigned_size_px, assigned_server_ms)
    if pinned or total <= limit_ms:
        return SizeChoice(assigned_size_px, upload, limit_ms - total)
    for step in sorted(ladder, key=lambda s: -s.input_size_px):
        if step.input_size_px >= assigned_size_px:
            continue
        total, upload = predict(step.input_size_px, step.server_ms)
        if total <= limit_ms:
            return SizeChoice(step.input_size_px, upload, limit_ms - total)
    return SizeChoice(0, 0.0, 0.0)
