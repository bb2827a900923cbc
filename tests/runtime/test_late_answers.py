"""An answer that comes back after its deadline is a deadline error, never a late 200."""

import asyncio

import numpy as np
import pytest

from shoal.core.models import Profile
from shoal.profiler.measure import summarise_latencies
from shoal.runtime.errors import DeadlineExceededError
from shoal.runtime.scheduler import monotonic_ms
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


def test_a_family_request_avoids_a_variant_whose_learnt_admission_error_would_refuse_it(fixture_repository_path):
    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=()))

        async def no_processes() -> None:
            return None

        service.manager.start = no_processes  # the batches run on fake workers below
        await service.start()
        for key in ("fixture.rf-16", "fixture.rf-64"):
            served = service.variants[key]
            served.latency = Profile(family="fixture", variant=served.variant.name, device="cpu", load_time_ms=1.0,
                                     batches={size: summarise_latencies(size, [0.5] * 5) for size in (1, 2, 4)})
            service.scheduler.attach_worker(FakeWorker(f"w-{key}", 1.0, variants=(key,)))
        accurate = max(("fixture.rf-16", "fixture.rf-64"), key=lambda key: service.variants[key].variant.accuracy or 0.0)
        image = {"images": np.zeros((1, 3, 64, 64), np.float32)}
        chosen = await service.infer("fixture", image, {"slo_ms": 60}, [])
        assert chosen.parameters["shoal_variant"] == accurate
        # The accurate variant's requests lately finished 100 ms later than predicted and its worker
        # is busy with a request queued: a new one would wait behind it, admission would refuse it
        # (the learnt error on top), so the policy must not pick it.
        service.scheduler.queues[accurate].observe_finishes([100.0] * 40, monotonic_ms())
        next(worker for worker in service.scheduler.workers if accurate in worker.loaded_variants).busy_until_ms = monotonic_ms() + 1.0
        queued = service.scheduler.submit(accurate, np.zeros((3, 64, 64), np.float32), monotonic_ms() + 10_000)
        chosen = await service.infer("fixture", image, {"slo_ms": 60}, [])
        assert chosen.parameters["shoal_variant"] != accurate
        await asyncio.gather(queued, return_exceptions=True)
        await service.stop()

    asyncio.run(scenario())
