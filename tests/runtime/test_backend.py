"""The Backend interface: local resources, replacement with back-off, capacity while a worker is missing."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from shoal.runtime.backend import LocalBackend, WorkerSpec, make_backend, start_replacement
from shoal.runtime.errors import WorkerFailedError


class FlakyWorker:
    """A worker whose start fails while `failures` has entries left."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        self.stopped = False
        self.alive = False

    async def start(self) -> None:
        if self.failures:
            raise WorkerFailedError(self.failures.pop(0))
        self.alive = True

    async def stop(self) -> None:
        self.stopped = True


def test_a_replacement_that_cannot_start_is_retried_with_back_off():
    failures = ["no node has room", "no node has room", "no node has room"]
    made: list[FlakyWorker] = []
    reported: list[tuple[str, float]] = []

    def make() -> FlakyWorker:
        made.append(FlakyWorker(failures))
        return made[-1]

    worker = asyncio.run(start_replacement(make, lambda error, retry_s: reported.append((str(error), retry_s)),
                                           first_retry_s=0.01, max_retry_s=0.025))
    assert worker is made[-1] and worker.alive and len(made) == 4
    assert all(failed.stopped for failed in made[:3])  # a failed start is cleaned up before the next try
    assert [retry_s for _, retry_s in reported] == [0.01, 0.02, 0.025]  # doubling, capped
    assert reported[0][0] == "no node has room"


def test_backends_by_name():
    assert make_backend("local").name == "local"
    with pytest.raises(ValueError, match="backend must be one of local, ray"):
        make_backend("kubernetes")
    assert LocalBackend().resources()["CPU"] == float(len(os.sched_getaffinity(0)))


async def _started_manager(repository, num_workers: int):
    """A real WorkerManager with `num_workers` single-threaded local worker processes."""
    from shoal.runtime.metrics import ServingMetrics
    from shoal.runtime.scheduler import Scheduler
    from shoal.runtime.worker_manager import ServeConfig, WorkerManager

    metrics = ServingMetrics()
    manager = WorkerManager(ServeConfig(repository=repository, num_workers=num_workers, intra_op_threads=1),
                            Scheduler(metrics), metrics, lambda key, reply: None)
    await manager.start()
    return manager, metrics


def test_the_manager_serves_on_the_other_workers_while_a_replacement_cannot_start(fixture_repository_path):

    async def scenario():
        manager, metrics = await _started_manager(fixture_repository_path, 2)
        real_backend = manager.backend
        failures = ["the node is gone"]

        class OneFailureBackend:  # the first replacement cannot start, the second can
            name = "local"

            def new_worker(self, spec: WorkerSpec, *, on_exit):
                worker = real_backend.new_worker(spec, on_exit=on_exit)
                if failures:
                    reason = failures.pop(0)

                    async def fail() -> None:
                        raise WorkerFailedError(reason)
                    worker.start = fail
                return worker

            def release(self) -> None:
                real_backend.release()

        manager.backend = OneFailureBackend()
        try:
            assert manager.live_workers == 2
            os.kill(manager.workers["w0"].pid, signal.SIGKILL)
            for _ in range(100):  # the death is noticed; the first replacement fails; 1 s back-off
                await asyncio.sleep(0.05)
                if metrics.worker_replacements_failed._value.get() == 1:
                    break
            during = manager.live_workers
            for _ in range(200):
                await asyncio.sleep(0.05)
                if manager.live_workers == 2:
                    break
            return during, manager.live_workers, metrics.worker_replacements_failed._value.get()
        finally:
            await manager.stop()

    during, after, failed_tries = asyncio.run(scenario())
    assert during == 1  # the autoscaler plans with the one live worker meanwhile
    assert failed_tries == 1 and after == 2  # then the retry brought the capacity back


def test_a_replacement_cancelled_while_starting_is_stopped():
    class SlowWorker(FlakyWorker):
        async def start(self) -> None:
            await asyncio.sleep(10)

    made: list[SlowWorker] = []

    async def scenario() -> None:
        task = asyncio.create_task(start_replacement(lambda: made.append(SlowWorker([])) or made[-1], lambda error, retry_s: None))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert len(made) == 1 and made[0].stopped


def test_stopping_the_manager_stops_a_replacement_that_is_still_starting(fixture_repository_path):

    started: list = []

    async def scenario():
        manager, metrics = await _started_manager(fixture_repository_path, 1)
        real_backend = manager.backend

        class SlowStartBackend:  # the replacement's process runs, but its start (say, a model load) takes long
            name = "local"

            def new_worker(self, spec: WorkerSpec, *, on_exit):
                worker = real_backend.new_worker(spec, on_exit=on_exit)
                real_start = worker.start

                async def slow_start() -> None:
                    await real_start()
                    started.append(worker)
                    await asyncio.sleep(30)
                worker.start = slow_start
                return worker

            def release(self) -> None:
                real_backend.release()

        manager.backend = SlowStartBackend()
        os.kill(manager.workers["w0"].pid, signal.SIGKILL)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if started:
                break
        await manager.stop()
        return started

    (replacement,) = asyncio.run(scenario())
    assert not replacement.process.is_alive()  # stopped before stop() returned, not orphaned


def test_a_replacement_that_dies_while_starting_is_retried_by_the_one_restart(fixture_repository_path):
    """Its exit used to start a second restart beside the one retrying it; the workers those
    started outlived `stop()`."""
    import multiprocessing

    async def scenario():
        manager, _ = await _started_manager(fixture_repository_path, 2)
        real_backend = manager.backend
        failing_starts = [2]

        class DyingBackend:  # the first two replacements get a device their process refuses
            name = "local"

            def new_worker(self, spec: WorkerSpec, *, on_exit):
                if failing_starts[0] > 0:
                    failing_starts[0] -= 1
                    spec = WorkerSpec(spec.worker_id, "tpu", 1)
                return real_backend.new_worker(spec, on_exit=on_exit)

            def release(self) -> None:
                real_backend.release()

        manager.backend = DyingBackend()
        most_restarts = 0
        try:
            os.kill(manager.workers["w0"].pid, signal.SIGKILL)
            for _ in range(300):
                await asyncio.sleep(0.05)
                most_restarts = max(most_restarts, len(manager._restarts))
                if failing_starts[0] == 0 and not manager._restarts:
                    break
            live = manager.live_workers
        finally:
            await manager.stop()
        await asyncio.sleep(0.5)
        left = [process.name for process in multiprocessing.active_children() if process.name.startswith("shoal-worker")]
        return most_restarts, failing_starts[0], live, left

    most_restarts, failing_left, live, left = asyncio.run(scenario())
    assert failing_left == 0 and live == 2
    assert most_restarts == 1
    assert left == []
