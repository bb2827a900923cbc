"""The client's local back-off between plans."""

from __future__ import annotations

import pytest

from shoal.planner.edge.backoff import choose_input_size
from shoal.planner.edge.live import LadderStep, raw_frame_kbits

LADDER = [LadderStep(32, "f.small", 0.6, 3.0), LadderStep(64, "f.mid", 0.7, 4.0), LadderStep(128, "f.large", 0.9, 6.0)]


def _choose(**overrides):
    values = dict(assigned_size_px=128, assigned_server_ms=6.0, ladder=LADDER, estimate_mbps=10.0, queued_bits=0.0,
                  min_rtt_ms=10.0, age_ms=0.0, slo_ms=100.0, safety_margin_ms=2.0)
    return choose_input_size(**{**values, **overrides})


def test_keeps_the_assigned_size_when_it_fits():
    choice = _choose()
    assert choice.input_size_px == 128
    assert choice.upload_ms == pytest.approx(raw_frame_kbits(128) / 10.0)
    assert choice.slack_ms == pytest.approx(98.0 - 10.0 - 6.0 - choice.upload_ms)


def test_steps_down_when_the_estimate_fell_or_the_link_is_busy():
    assert _choose(estimate_mbps=4.0).input_size_px == 64  # 128 px: 98 ms upload
    assert _choose(queued_bits=500_000).input_size_px == 64  # 50 ms of queue ahead at 10 Mbit/s
    assert _choose(estimate_mbps=0.5).input_size_px == 32
    assert _choose(age_ms=60.0, estimate_mbps=2.0).input_size_px == 32


def test_skips_when_nothing_fits_and_never_steps_up():
    assert _choose(estimate_mbps=0.05).input_size_px == 0
    assert _choose(assigned_size_px=32, assigned_server_ms=3.0, estimate_mbps=0.05).input_size_px == 0
    assert _choose(assigned_size_px=64, assigned_server_ms=4.0, estimate_mbps=100.0).input_size_px == 64


def test_pinned_clients_send_their_size_regardless():
    choice = _choose(estimate_mbps=0.05, pinned=True)
    assert choice.input_size_px == 128 and choice.slack_ms < 0
