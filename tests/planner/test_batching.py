import pytest

from shoal.planner.batching import admission_finish_ms, decide_batch


def linear(fixed_ms, per_item_ms):
    return lambda size: fixed_ms + per_item_ms * size


def test_empty_queue_runs_nothing():
    assert decide_batch([], 0.0, linear(1, 1), 8).batch_size == 0


def test_takes_the_largest_batch_that_meets_the_earliest_deadline():
    # latency(b) = 2 + b; earliest deadline 10 ms away -> b <= 8, capped by queue length and max batch.
    decision = decide_batch([10.0] * 20, 0.0, linear(2, 1), 32)
    assert (decision.num_expired, decision.batch_size) == (0, 8)
    assert decide_batch([10.0] * 5, 0.0, linear(2, 1), 32).batch_size == 5
    assert decide_batch([100.0] * 50, 0.0, linear(2, 1), 16).batch_size == 16


def test_requests_that_cannot_finish_even_alone_are_expired_first():
    decision = decide_batch([2.0, 2.5, 50.0, 60.0], 0.0, linear(2, 1), 8)
    assert decision.num_expired == 2
    assert decision.batch_size == 2


def test_all_expired():
    decision = decide_batch([1.0, 1.0], 5.0, linear(1, 1), 8)
    assert (decision.num_expired, decision.batch_size) == (2, 0)


def test_waits_for_more_only_while_the_deadline_allows_a_full_batch():
    decision = decide_batch([100.0], 0.0, linear(2, 1), 8, max_queue_delay_ms=5.0)
    assert decision.batch_size == 0 and decision.wait_ms == pytest.approx(5.0)
    tight = decide_batch([12.0], 0.0, linear(2, 1), 8, max_queue_delay_ms=5.0)
    assert tight.batch_size == 0 and tight.wait_ms == pytest.approx(2.0)
    no_slack = decide_batch([10.0], 0.0, linear(2, 1), 8, max_queue_delay_ms=5.0)
    assert no_slack.batch_size == 1
    assert decide_batch([100.0], 0.0, linear(2, 1), 8).batch_size == 1  # work-conserving by default


def test_bad_max_batch_size():
    with pytest.raises(ValueError, match="max_batch_size"):
        decide_batch([1.0], 0.0, linear(1, 1), 0)


def test_admission_counts_rounds_of_full_batches_across_workers():
    latency = linear(2, 1)
    assert admission_finish_ms(0, 0.0, latency, 8, 1) == pytest.approx(3.0)
    assert admission_finish_ms(0, 4.0, latency, 8, 1) == pytest.approx(7.0)
    # 20 queued, 8 per batch, 2 workers: one full round (16) ahead, then the remaining 4 and
    # this request shared by the two workers: its own batch holds 3.
    assert admission_finish_ms(20, 0.0, latency, 8, 2) == pytest.approx(10.0 + 5.0)
    # 200 queued on 64 workers never fill a round: batches of ceil(201 / 64) = 4.
    assert admission_finish_ms(200, 0.0, latency, 32, 64) == pytest.approx(6.0)
    # One worker: the whole remainder is its batch, as before.
    assert admission_finish_ms(5, 0.0, latency, 8, 1) == pytest.approx(8.0)
