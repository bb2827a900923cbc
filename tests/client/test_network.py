"""Bandwidth traces and the token-bucket uplink, driven by a fake clock."""

from __future__ import annotations

import pytest

from shoal.client.network import BandwidthTrace, EmulatedLink, load_trace, trace_offsets
from shoal.core.errors import InvalidInputError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_builtin_traces_match_their_source_description():
    lte = load_trace("lte")
    assert len(lte.values_mbps) == 199 and min(lte.values_mbps) == pytest.approx(2.855) and max(lte.values_mbps) == pytest.approx(26.328)
    wifi = load_trace("wifi")
    assert len(wifi.values_mbps) == 200 and wifi.step_s == 1.0
    synthetic = load_trace("synthetic")
    assert synthetic.values_mbps == (20, 15, 10, 7.5, 10, 15, 20) and synthetic.step_s == 20.0
    assert synthetic.mbps_at(45.0) == 10 and synthetic.mbps_at(140.0 + 1.0) == 20  # loops


def test_trace_files_are_checked(tmp_path):
    with pytest.raises(InvalidInputError, match="neither a built-in"):
        load_trace(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("10\nfast\n")
    with pytest.raises(InvalidInputError, match="number of Mbit/s"):
        load_trace(str(bad))
    negative = tmp_path / "negative.txt"
    negative.write_text("10\n-1\n")
    with pytest.raises(InvalidInputError, match="positive"):
        load_trace(str(negative))
    good = tmp_path / "mine.txt"
    good.write_text("5 6\n7\n")
    assert load_trace(str(good)).values_mbps == (5.0, 6.0, 7.0)


def test_finish_time_integrates_across_steps_and_matches_bits_between():
    trace = BandwidthTrace("t", (10.0, 5.0))
    # 10 Mbit in the first second, the remaining 5 Mbit at 5 Mbit/s take one more second.
    assert trace.finish_s(0.0, 15e6) == pytest.approx(2.0)
    assert trace.finish_s(0.5, 5e6) == pytest.approx(1.0)
    assert trace.finish_s(1.5, 5e6) == pytest.approx(2.25)  # 2.5 Mbit by 2.0, then 10 Mbit/s again
    for start, bits in [(0.2, 1e6), (0.9, 12e6), (3.3, 40e6)]:
        assert trace.bits_between(start, trace.finish_s(start, bits)) == pytest.approx(bits, rel=1e-9)


def test_link_serialises_messages_in_order_and_reports_its_queue():
    clock = FakeClock()
    link = EmulatedLink(BandwidthTrace("flat", (8.0,)), propagation_ms=5.0, burst_bits=0.0, clock=clock)
    first = link.reserve(100_000)  # 800 kbit at 8 Mbit/s: 100 ms
    second = link.reserve(50_000)  # queued behind: 50 ms more
    assert first - clock.now == pytest.approx(0.105)
    assert second - clock.now == pytest.approx(0.155)
    assert link.queued_bits() == pytest.approx(1.2e6)
    assert link.backlog_ms() == pytest.approx(150.0)
    clock.now += 0.05
    assert link.queued_bits() == pytest.approx(0.8e6)
    clock.now += 1.0
    assert link.queued_bits() == 0.0 and link.backlog_ms() == 0.0


def test_idle_link_lets_one_burst_leave_at_once():
    clock = FakeClock()
    link = EmulatedLink(BandwidthTrace("flat", (8.0,)), propagation_ms=0.0, burst_bits=8000.0, clock=clock)
    clock.now += 10.0
    assert link.reserve(1000) == pytest.approx(clock.now)  # 8000 bits: covered by the saved burst
    assert link.reserve(1000) == pytest.approx(clock.now + 0.001)  # the bucket is empty now


def test_offsets_place_clients_at_distinct_points_of_the_trace():
    trace = load_trace("lte")
    offsets = trace_offsets(trace, 4, seed=1)
    assert len(set(offsets)) == 4 and all(0 <= o < trace.duration_s for o in offsets)
    assert offsets == trace_offsets(trace, 4, seed=1)
    clock = FakeClock()
    link = EmulatedLink(trace, offset_s=offsets[2], clock=clock)
    assert link.bandwidth_mbps() == trace.mbps_at(offsets[2])
