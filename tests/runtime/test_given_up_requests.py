"""Items of a request that gave up (refused part-way, or its client went away) leave the queue
at once: they must not hold its places or lengthen the drain admission predicts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shoal.core.models import Profile
from shoal.profiler.measure import summarise_latencies
from shoal.runtime.errors import OverloadedError
from shoal.runtime.service import InferenceService
from shoal.runtime.worker_manager import ServeConfig

from .test_scheduler import FakeWorker  # noqa: TID252

KEY = "fixture.rf-16"


async def _service_on_a_slow_fake_worker(repository, queue_capacity: int) -> InferenceService:
    service = InferenceService(ServeConfig(repository=repository, preload=(), queue_capacity=queue_capacity, max_batch_size=1,
                                         batches_ahead=0))  # nothing leaves the queue until the worker is free

    async def no_processes() -> None:
        return None

    service.manager.start = no_processes  # batches run on the fake worker below
    await service.start()
    service.variants[KEY].latency = Profile(family="fixture", variant="rf-16", device="cpu", load_time_ms=1.0,
                                            batches={1: summarise_latencies(1, [1.0] * 5)})  # fmt: skip
    service.scheduler.attach_worker(FakeWorker("slow", 300.0, variants=(KEY,)))
    return service


def _infer(service: InferenceService, images: int) -> asyncio.Task:
    inputs = {"images": np.zeros((images, 3, 16, 16), np.float32)}
    return asyncio.create_task(service.infer(KEY, inputs, {"slo_ms": 60_000}, []))


def test_a_request_refused_part_way_leaves_none_of_its_items_queued(fixture_repository_path):
    async def scenario():
        service = await _service_on_a_slow_fake_worker(fixture_repository_path, queue_capacity=4)
        running = _infer(service, 1)
        await asyncio.sleep(0.05)  # on the worker for the next 300 ms; the queue is empty
        refused = _infer(service, 6)  # 4 items fit the queue, the 5th is refused
        with pytest.raises(OverloadedError, match="is full"):
            await refused
        queued_after_refusal = len(service.scheduler.queues[KEY])
        admitted = _infer(service, 3)  # there is room for it: the refused request's items are gone
        await asyncio.sleep(0.01)
        admitted_state = "refused" if admitted.done() and admitted.exception() else "queued"
        queued_now = len(service.scheduler.queues[KEY])
        running.cancel()
        admitted.cancel()
        await asyncio.gather(running, admitted, return_exceptions=True)
        await service.stop()
        return queued_after_refusal, admitted_state, queued_now

    queued_after_refusal, admitted_state, queued_now = asyncio.run(scenario())
    assert queued_after_refusal == 0
    assert admitted_state == "queued" and queued_now == 3


def test_a_request_whose_client_went_away_leaves_the_queue(fixture_repository_path):
    async def scenario():
        service = await _service_on_a_slow_fake_worker(fixture_repository_path, queue_capacity=8)
        running = _infer(service, 1)
        await asyncio.sleep(0.05)
        waiting = _infer(service, 2)
        await asyncio.sleep(0.01)
        queued_before = len(service.scheduler.queues[KEY])
        finish_before_ms = service.scheduler.predicted_finish_ms(KEY, 0.0)
        waiting.cancel()  # what a gRPC cancel or a closed connection does to its handler
        with pytest.raises(asyncio.CancelledError):
            await waiting
        queued_after = len(service.scheduler.queues[KEY])
        finish_after_ms = service.scheduler.predicted_finish_ms(KEY, 0.0)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await service.stop()
        return queued_before, queued_after, finish_before_ms, finish_after_ms

    queued_before, queued_after, finish_before_ms, finish_after_ms = asyncio.run(scenario())
    assert queued_before == 2 and queued_after == 0
    assert finish_after_ms < finish_before_ms


def test_a_request_whose_place_goes_to_a_more_urgent_one_is_answered_429_and_counted_shed(fixture_repository_path):
    async def scenario():
        service = await _service_on_a_slow_fake_worker(fixture_repository_path, queue_capacity=2)
        running = _infer(service, 1)
        await asyncio.sleep(0.05)
        background = [_infer(service, 1) for _ in range(2)]  # the queue is full now
        await asyncio.sleep(0.01)
        urgent = asyncio.create_task(service.infer(KEY, {"images": np.zeros((1, 3, 16, 16), np.float32)}, {"slo_ms": 60_000, "priority": 1}, []))
        await asyncio.sleep(0.01)
        displaced = background[-1]
        outcome = displaced.exception() if displaced.done() else None
        shed = service.metrics.registry.get_sample_value("shoal_requests_total", {"model": KEY, "variant": KEY, "outcome": "shed"})
        for task in (running, *background, urgent):
            task.cancel()
        await asyncio.gather(running, *background, urgent, return_exceptions=True)
        await service.stop()
        return outcome, shed

    outcome, shed = asyncio.run(scenario())
    assert isinstance(outcome, OverloadedError) and "more urgent request took this one's place" in str(outcome)
    assert shed == 1.0
