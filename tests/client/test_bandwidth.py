"""The client's upload-bandwidth estimator on synthetic acknowledgement timings."""

from __future__ import annotations

import pytest

from shoal.client.bandwidth import BandwidthEstimator, FrameSend, frame_to_send

RTT_S = 0.010


def _idle_frames(estimator, rate_mbps, *, start_s=0.0, count=6, size_bytes=50_000, period_s=0.1):
    t = start_s
    for _ in range(count):
        transfer = size_bytes * 8 / (rate_mbps * 1e6)
        estimator.on_ack(size_bytes, t, t + transfer + RTT_S)
        t += period_s
    return t


def test_idle_transfers_measure_the_link_rate():
    estimator = BandwidthEstimator(initial_mbps=1.0)
    estimator.on_rtt(RTT_S * 1000)
    end = _idle_frames(estimator, 12.0)
    assert estimator.estimate_mbps(end) == pytest.approx(12.0, rel=1e-6)


def test_back_to_back_frames_are_timed_by_the_gap_between_acks():
    estimator = BandwidthEstimator(initial_mbps=1.0)
    estimator.on_rtt(RTT_S * 1000)
    size = 40_000
    transfer = size * 8 / 5e6
    for k in range(5):  # all queued at t=0; frame k leaves after k transfers
        estimator.on_ack(size, 0.0, (k + 1) * transfer + RTT_S)
    assert estimator.estimate_mbps(1.0) == pytest.approx(5.0, rel=1e-6)


def test_estimate_falls_at_once_and_rises_gradually():
    estimator = BandwidthEstimator(initial_mbps=1.0)
    estimator.on_rtt(RTT_S * 1000)
    t = _idle_frames(estimator, 20.0, count=8)
    t = _idle_frames(estimator, 4.0, start_s=t, count=1)
    assert estimator.estimate_mbps(t) <= 4.0 * 2 / (1 + 4 / 20) + 1e-9  # at most the last two samples' rate
    assert estimator.estimate_mbps(t) < 7.0
    t = _idle_frames(estimator, 20.0, start_s=t, count=2)
    rising = estimator.estimate_mbps(t)
    assert 4.0 < rising < 20.0  # the slow sample still weighs in the window


def test_old_samples_expire_but_the_last_estimate_is_kept():
    estimator = BandwidthEstimator(initial_mbps=3.0, horizon_s=1.0)
    assert estimator.estimate_mbps(0.0) == 3.0  # nothing measured yet: the initial estimate
    estimator.on_rtt(RTT_S * 1000)
    end = _idle_frames(estimator, 9.0)
    assert estimator.estimate_mbps(end) == pytest.approx(9.0)
    assert estimator.estimate_mbps(end + 60.0) == pytest.approx(9.0)


def test_min_rtt_is_the_smallest_ping():
    estimator = BandwidthEstimator(initial_mbps=1.0)
    for rtt in (30.0, 12.0, 18.0):
        estimator.on_rtt(rtt)
    estimator.on_rtt(-1.0)  # nonsense is ignored
    assert estimator.min_rtt_ms == 12.0 and estimator.rtt_samples == 3


def test_untimeable_transfers_only_raise_the_estimate_as_lower_bounds():
    estimator = BandwidthEstimator(initial_mbps=1.0, min_informative_s=0.004)
    estimator.on_rtt(RTT_S * 1000)
    t = _idle_frames(estimator, 0.5, count=3, size_bytes=2_000)  # 32 ms each: timed, 0.5 Mbit/s
    assert estimator.estimate_mbps(t) == pytest.approx(0.5)
    # 1000 bytes in 1 ms: too short to time, but at least 8 kbit / 4 ms = 2 Mbit/s.
    estimator.on_ack(1_000, t, t + 0.001 + RTT_S)
    assert estimator.estimate_mbps(t + 0.02) == pytest.approx(2.0)
    # A lower bound below the estimate changes nothing.
    estimator.on_ack(100, t + 0.1, t + 0.1 + 0.0001 + RTT_S)
    assert estimator.estimate_mbps(t + 0.12) == pytest.approx(2.0)


def test_probes_are_asked_for_when_nothing_was_timed_lately_and_grow_when_untimeable():
    estimator = BandwidthEstimator(initial_mbps=2.0, min_informative_s=0.004, probe_interval_s=1.0)
    estimator.on_rtt(RTT_S * 1000)
    t = _idle_frames(estimator, 2.0, count=2, size_bytes=5_000)  # timed just now
    assert estimator.probe_bytes(500, t) == 0
    first = estimator.probe_bytes(500, t + 1.5)
    assert first == int(2 * 0.004 * 2e6 / 8) - 500  # twice the timeable size at the estimate
    assert estimator.probe_bytes(500, t + 1.55) == 0  # one probe at a time
    estimator.on_ack(500 + first, t + 1.5, t + 1.5 + 0.001 + RTT_S)  # it went through in 1 ms
    second = estimator.probe_bytes(500, t + 2.0)
    assert second > first  # a larger probe (and a higher estimate from the lower bound)


def test_a_link_probe_is_due_once_per_interval_when_nothing_is_timed_or_in_flight():
    estimator = BandwidthEstimator(initial_mbps=1.0, probe_interval_s=1.0)
    estimator.on_rtt(RTT_S * 1000)
    end = _idle_frames(estimator, 12.0)  # timed transfers up to `end`
    assert not estimator.probe_due(end + 0.5)  # a transfer was timed within the interval
    assert estimator.probe_due(end + 1.5)
    assert not estimator.probe_due(end + 1.6)  # one per interval
    estimator.on_send(1000, end + 2.4)
    assert not estimator.probe_due(end + 2.6)  # its ack will tell
    estimator.forget(end + 2.4)  # answered without an ack: no longer in flight
    assert estimator.probe_due(end + 2.7)


def _send(estimator, **overrides):
    arguments = dict(chosen_size_px=64, chosen_upload_ms=1.0, slack_ms=100.0, smallest_size_px=16, frame_bytes=lambda px: 3 * px * px,
                     estimate_mbps=100.0, adaptive=True, now_s=0.0, max_message_bytes=10**6)  # fmt: skip
    return frame_to_send(estimator, **{**arguments, **overrides})


def test_a_frame_no_size_fits_goes_out_at_the_smallest_size_once_per_probe_interval():
    estimator = BandwidthEstimator(initial_mbps=1.0)
    skipped = dict(chosen_size_px=0, chosen_upload_ms=0.0, slack_ms=0.0, estimate_mbps=1.0)
    assert _send(estimator, **skipped) == FrameSend(16, 3 * 16 * 16 * 8 / 1000.0, 0, True)  # its upload at the estimate
    assert _send(estimator, **skipped, now_s=0.5) == FrameSend(0, 0.0, 0, False)
    assert _send(estimator, **skipped, now_s=1.5).link_probe
    # A pinned (or per-query) client follows no plan: it neither probes nor pads.
    assert _send(BandwidthEstimator(initial_mbps=1.0), **skipped, adaptive=False) == FrameSend(0, 0.0, 0, False)
    assert _send(BandwidthEstimator(initial_mbps=100.0), adaptive=False) == FrameSend(64, 1.0, 0, False)


def test_probe_padding_fits_the_message_limit_and_the_frames_slack():
    # Nothing timed yet: the estimator asks for a probe of 2 x 4 ms at 100 Mbit/s, 100 kB.
    padded = _send(BandwidthEstimator(initial_mbps=100.0))
    assert padded.padding_bytes == 100_000 - 3 * 64 * 64
    assert padded.upload_ms == pytest.approx(1.0 + padded.padding_bytes * 8 / 1000.0 / 100.0)
    assert _send(BandwidthEstimator(initial_mbps=100.0), max_message_bytes=50_000).padding_bytes == 50_000 - 3 * 64 * 64
    assert _send(BandwidthEstimator(initial_mbps=100.0), slack_ms=5.0) == FrameSend(64, 1.0, 0, False)  # 7 ms of padding
