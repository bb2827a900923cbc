import pytest

from shoal.planner.batching import admission_finish_ms, admitted_per_ms, decide_batch


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


def test_admission_dispatches_as_the_workers_do_each_busy_one_taking_a_full_batch_as_it_frees():
    latency = linear(2, 1)  # 2 ms + 1 ms per item
    assert admission_finish_ms(0, [0.0], latency, 8) == pytest.approx(3.0)
    assert admission_finish_ms(0, [4.0], latency, 8) == pytest.approx(7.0)
    assert admission_finish_ms(0, [6.0, 4.0], latency, 8) == pytest.approx(7.0)  # the first to free takes it
    # 20 queued, 8 per batch, 2 idle workers: each takes 8 now; the first to free again (10 ms)
    # takes the remaining 4 and this request: a batch of 5
    assert admission_finish_ms(20, [0.0, 0.0], latency, 8) == pytest.approx(10.0 + 7.0)
    # idle workers share out what is queued: 200 on 64 idle workers are batches of ceil(201 / 64)
    assert admission_finish_ms(200, [0.0] * 64, latency, 32) == pytest.approx(latency(4))
    assert admission_finish_ms(10, [0.0, 0.0, 5.0], latency, 8) == pytest.approx(latency(6))
    # more than the idle ones can take at once: the rest waits for turns (two full batches now,
    # then the first to free, the busy one at 5 ms, takes the remaining 2 and this request)
    assert admission_finish_ms(18, [0.0, 0.0, 5.0], latency, 8) == pytest.approx(5.0 + latency(3))
    # one worker: the whole remainder is its batch
    assert admission_finish_ms(5, [0.0], latency, 8) == pytest.approx(8.0)
    assert admission_finish_ms(0, [], latency, 8) == float("inf")


def test_admission_takes_turns_one_by_one_when_a_worker_is_far_behind():
    latency = linear(2, 1)  # a full batch of 8: 10 ms
    # the second worker frees only at 30 ms: the first runs both full batches ahead (0-10,
    # 10-20) and then this request's batch of 5 at 20 ms; rounds in turn would have said 30 ms
    assert admission_finish_ms(20, [0.0, 30.0], latency, 8) == pytest.approx(20.0 + 7.0)
    # a lead between one and two full batches: the first worker takes two turns (1-11, 11-21)
    # before the second takes its first (13), which then takes this request
    assert admission_finish_ms(16, [1.0, 13.0], latency, 8) == pytest.approx(13.0 + latency(1))
    # against taking the turns one by one, where rounds apply and where they do not
    for busy in ([0.5, 3.0], [1.0, 9.0, 5.0], [1.0, 13.0], [2.0, 25.0, 4.0], [1.0, 1000.0]):
        for queued in range(0, 80):
            predicted = admission_finish_ms(queued, busy, latency, 8)
            free = sorted(busy)
            for _ in range(queued // 8):
                free = sorted(free[1:] + [free[0] + 10.0])
            assert predicted == pytest.approx(free[0] + latency(queued % 8 + 1)), (busy, queued)


def test_admission_without_a_latency_model_or_a_worker_that_frees_predicts_never():
    assert admission_finish_ms(8, [5.0, 10.0], lambda size: float("inf"), 8, arrivals_per_ms=1.0) == float("inf")
    assert admission_finish_ms(0, [float("inf")], linear(2, 1), 8, arrivals_per_ms=1.0) == float("inf")
    # one worker that never frees does not stop the others
    assert admission_finish_ms(0, [float("inf"), 4.0], linear(2, 1), 8) == pytest.approx(7.0)


def test_admission_counts_the_requests_that_join_the_batch_while_it_waits():
    latency = linear(2, 1)
    # admitted at 0.5 per ms, the worker frees in 4 ms: 2 more join this request's batch
    assert admission_finish_ms(0, [4.0], latency, 8, arrivals_per_ms=0.5) == pytest.approx(4.0 + latency(3))
    # never beyond a full batch, and nothing joins a batch that starts now
    assert admission_finish_ms(6, [4.0], latency, 8, arrivals_per_ms=5.0) == pytest.approx(4.0 + latency(8))
    assert admission_finish_ms(3, [0.0, 4.0], latency, 8, arrivals_per_ms=5.0) == pytest.approx(latency(4))


def test_admitted_rate_is_the_recent_intervals_over_the_time_since_the_first_of_them():
    assert admitted_per_ms([], 100.0) == 0.0
    assert admitted_per_ms([5.0], 5.5) == 0.0  # one admission is no rate yet
    assert admitted_per_ms([0.0, 1.0, 2.0, 3.0], 3.0) == pytest.approx(1.0)
    assert admitted_per_ms([0.0, 1.0, 2.0, 3.0], 30.0) == pytest.approx(0.1)  # a pause lowers it at once
    assert admitted_per_ms([10.0, 10.0, 10.0], 10.0) == pytest.approx(2.0)  # never over less than 1 ms


def test_a_batch_meets_the_earliest_deadline_in_it_wherever_it_is_queued():
    # Several priority levels: a more urgent level's loose deadline heads the queue. The batch
    # was sized by it alone, and the tight deadlines queued behind it were missed.
    latency = lambda size: 5.0 * size  # noqa: E731
    assert decide_batch([100.0, 12.0, 12.0, 12.0], 0.0, latency, 4).batch_size == 2
    assert decide_batch([12.0, 100.0, 100.0, 100.0], 0.0, latency, 4).batch_size == 2  # sorted: as before
    assert decide_batch([100.0, 100.0, 40.0], 0.0, latency, 4).batch_size == 3
