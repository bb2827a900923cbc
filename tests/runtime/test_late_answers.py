"""An answer that comes back after its deadline is a deadline error, never a late 200."""

import asyncio

import numpy as np
import pytest

from shoal.core.models import Profile
from shoal.profiler.measure import summarise_latencies
from shoal.runtime.errors import DeadlineExceededError
from shoal.runtime.service import InferenceService
from shoal.runtime.worker_manager import ServeConfig

from .test_scheduler import FakeWorker  # noqa: TID252


def test_an_answer_finished_after_its_deadline_is_dropped_not_sent(fixture_repository_path):
    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=()))

        async def no_processes() -> None:
            return None

        service.manager.start = no_processes  # the batches run on a fake worker below
        await service.start()
        key = "fixture.rf-16"
        served = service.variants[key]
        # what a load's warm-up would measure: half a millisecond per batch
        served.latency = Profile(family="fixture", variant="rf-16", device="cpu", load_time_ms=1.0,
                                 batches={size: summarise_latencies(size, [0.5] * 5) for size in (1, 2, 4)})
        # profiled at well under a millisecond, but this worker takes 120 ms: admission and the
        # batcher both expect the request to make its 60 ms SLO, and it finishes too late
        worker = FakeWorker("slow", 120.0, variants=(key,))
        service.scheduler.attach_worker(worker)
        image = {"images": np.zeros((1, 3, 32, 32), np.float32)}
        with pytest.raises(DeadlineExceededError, match="past the 60 ms SLO"):
            await service.infer(key, image, {"slo_ms": 60}, [])
        assert worker.batches == [1]  # it ran: dropped after the fact, not at dequeue
        answered = await service.infer(key, image, {"slo_ms": 1000}, [])
        assert answered.parameters["shoal_server_ms"] >= 120.0
        text = service.metrics.render().decode()
        assert f'shoal_requests_total{{model="{key}",outcome="dropped",variant="{key}"}} 1.0' in text
        assert f'shoal_requests_total{{model="{key}",outcome="success",variant="{key}"}} 1.0' in text
        await service.stop()

    asyncio.run(scenario())
