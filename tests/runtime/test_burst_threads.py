"""Burst threads: a CPU worker's wider session, used by a batch that runs while the other workers idle."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shoal.cli import main
from shoal.runtime.metrics import ServingMetrics
from shoal.runtime.scheduler import Scheduler, monotonic_ms
from shoal.runtime.variant_queue import VariantQueue
from shoal.runtime.worker import ModelHost
from shoal.zoo.repository import ModelRepository

from .test_scheduler import FakeWorker


def _load_message(repository_path, variant: str = "rf-16") -> dict:
    repository = ModelRepository(repository_path)
    family = repository.load_family("fixture")
    size = repository.load_variant("fixture", variant).input_size_px
    return {
        "op": "load", "variant": f"fixture.{variant}", "path": str(repository.model_path("fixture", variant)),
        "input_name": family.input_name, "output_name": family.output_name, "input_shape": [family.input_channels, size, size],
        "warmup": 1, "profile_batch_sizes": [1], "profile_repeats": 1,
    }  # fmt: skip


def test_a_host_with_burst_threads_runs_a_wider_session_only_when_asked(fixture_repository_path):
    host = ModelHost("cpu", 1, burst_threads=2)
    host.load(_load_message(fixture_repository_path))
    narrow = host.sessions["fixture.rf-16"][0]
    wide = host.burst_sessions["fixture.rf-16"]
    assert narrow.get_session_options().intra_op_num_threads == 1
    assert wide.get_session_options().intra_op_num_threads == 2
    calls: list[str] = []

    class Recording:  # which session ran each batch
        def __init__(self, name, session):
            self.name, self.session = name, session

        def run(self, *args, **kwargs):
            calls.append(self.name)
            return self.session.run(*args, **kwargs)

    host.sessions["fixture.rf-16"] = (Recording("narrow", narrow), *host.sessions["fixture.rf-16"][1:])
    host.burst_sessions["fixture.rf-16"] = Recording("wide", wide)
    inputs = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    narrow_outputs, _ = host.run("fixture.rf-16", inputs)
    wide_outputs, _ = host.run("fixture.rf-16", inputs, burst=True)
    assert calls == ["narrow", "wide"]
    np.testing.assert_allclose(wide_outputs, narrow_outputs, rtol=1e-5, atol=1e-6)
    host.unload("fixture.rf-16")
    assert host.sessions == {} and host.burst_sessions == {}


@pytest.mark.parametrize(("threads", "burst_threads"), [(2, 2), (2, 0), (2, 1)])
def test_no_burst_session_unless_it_is_wider(fixture_repository_path, threads, burst_threads):
    host = ModelHost("cpu", threads, burst_threads=burst_threads)
    host.load(_load_message(fixture_repository_path))
    assert host.burst_sessions == {}
    outputs, _ = host.run("fixture.rf-16", np.zeros((1, 3, 16, 16), np.float32), burst=True)  # the one session serves it
    assert outputs.shape[0] == 1


def test_a_batch_bursts_only_while_every_other_worker_is_idle():
    async def scenario():
        scheduler = Scheduler(ServingMetrics())
        scheduler.add_queue(VariantQueue("v", lambda size: 30.0, 1, 100))
        first, second, dead = FakeWorker("a", 30.0), FakeWorker("b", 30.0), FakeWorker("c", 30.0)
        for worker in (first, second, dead):
            worker.burst_threads = 2
        dead.alive = False
        dead.busy_until_ms = monotonic_ms() + 10_000  # a dead worker's stale estimate must not block bursting
        for worker in (first, second, dead):
            scheduler.attach_worker(worker)
        deadline = monotonic_ms() + 10_000
        await scheduler.submit("v", np.ones(1, np.float32), deadline)  # alone: bursts
        await asyncio.gather(*(scheduler.submit("v", np.ones(1, np.float32), deadline) for _ in range(2)))  # side by side
        await scheduler.close()
        return first.bursts + second.bursts

    bursts = asyncio.run(scenario())
    assert sorted(bursts) == [False, True, True]  # the lone batch, then the first of the pair, not the second


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "2", "--threads", "2", "--burst-threads", "2"], "--burst-threads (2) must exceed the threads per worker (2)"),
        (["--threads", "1", "--burst-threads", "2"], "--burst-threads needs --workers >= 2"),
        (["--backend", "ray", "--workers", "2", "--burst-threads", "4"], "--burst-threads applies to CPU workers of the local backend"),
        (["--device", "cuda:0", "--burst-threads", "4"], "--burst-threads applies to CPU workers of the local backend"),
    ],
)
def test_serve_rejects_burst_threads_where_they_do_not_apply(capsys, fixture_repository_path, options, message):
    code = main(["serve", "--repo", str(fixture_repository_path), *options])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("burst_threads", [0, 2])
def test_only_narrow_batches_teach_the_batch_time_model(burst_threads):
    async def scenario():
        # profiled at 40 ms, really 10 ms: a narrow batch teaches the model; a burst batch, whose
        # speed a loaded server would not see, does not
        scheduler = Scheduler(ServingMetrics())
        scheduler.add_queue(VariantQueue("v", lambda size: 40.0, 1, 100))
        worker = FakeWorker("w", 10.0)
        worker.burst_threads = burst_threads
        scheduler.attach_worker(worker)
        await scheduler.submit("v", np.ones(1, np.float32), monotonic_ms() + 1000)
        await scheduler.close()
        return worker.bursts, scheduler.queues["v"].slowdown

    bursts, slowdown = asyncio.run(scenario())
    if burst_threads:
        assert bursts == [True] and slowdown == 1.0
    else:  # a single worker without a burst session never bursts, and keeps learning
        assert bursts == [False] and slowdown < 1.0
