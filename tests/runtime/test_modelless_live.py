"""The model-less selector sees a served variant's latency as admission will predict it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from shoal.planner.modelless import ModellessVariant, Requirements, predicted_latency_ms, select_variant
from shoal.runtime.metrics import ServingMetrics
from shoal.runtime.modelless import _live
from shoal.runtime.scheduler import Scheduler, monotonic_ms
from shoal.runtime.variant_queue import VariantQueue

from .test_scheduler import FakeWorker


def _variant(name: str, batch1_ms: float, price: float) -> ModellessVariant:
    return ModellessVariant(name, "task", 0.9, "cpu", price, tuple(batch1_ms * b for b in range(1, 9)), 100.0)


def test_the_live_view_predicts_with_the_schedulers_own_prediction_and_margin():
    async def scenario():
        scheduler = Scheduler(ServingMetrics())
        for name, batch1_ms in (("cheap", 10.0), ("dear", 2.0)):
            scheduler.add_queue(VariantQueue(name, lambda size, ms=batch1_ms: ms * size, 8, 100))
        worker = FakeWorker("w", 10.0, variants=("cheap", "dear"))
        scheduler.attach_worker(worker)
        service = SimpleNamespace(scheduler=scheduler, arrival_rps_by_variant={})
        cheap, dear = _variant("cheap", 10.0, 1.0), _variant("dear", 2.0, 10.0)
        now = monotonic_ms()
        idle = [_live(service, view, now) for view in (cheap, dear)]
        scheduler.loop_monitor.lag_ms = 25.0  # a saturated event loop: admission counts it, the profile does not
        for _ in range(3):  # nothing awaits before the views below: the batcher has not taken them yet
            scheduler.submit("cheap", np.zeros(1, np.float32), monotonic_ms() + 1000)
        lagging = [_live(service, view, now) for view in (cheap, dear)]
        await scheduler.close()
        return scheduler, idle, lagging

    scheduler, idle, lagging = asyncio.run(scenario())
    requirements = Requirements(slo_ms=40.0)
    assert select_variant(requirements, idle).variant == "cheap"
    cheap_now = lagging[0]
    # Three queued ahead of it on one worker (a batch of four, 40 ms) and the loop's 25 ms lag.
    assert cheap_now.predicted_finish_ms == pytest.approx(25.0 + 40.0)
    assert predicted_latency_ms(cheap_now, 40.0) == pytest.approx(cheap_now.predicted_finish_ms + cheap_now.admission_margin_ms)
    assert select_variant(requirements, lagging).variant == "dear"
    assert lagging[1].predicted_finish_ms == pytest.approx(25.0 + 2.0)
