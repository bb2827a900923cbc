"""Loading a variant while the server serves: one worker at a time across all callers, so that
the others keep serving (WorkerManager._load_rolling); before it serves (its start-up
preloads), on all workers at once."""

import asyncio

from shoal.runtime.service import InferenceService
from shoal.runtime.worker_manager import ServeConfig


def test_loads_go_to_all_workers_at_once_at_start_up_and_one_at_a_time_once_serving(fixture_repository_path):
    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=(), num_workers=2, intra_op_threads=1))
        await service.start()
        manager = service.manager
        in_flight, peaks = [0], {}
        try:
            assert manager.serving  # set by start(), once its preloads are done
            for worker in manager.workers.values():
                original = worker.load

                async def counted(*args, original=original, **kwargs):
                    in_flight[0] += 1
                    peaks[phase[0]] = max(peaks.get(phase[0], 0), in_flight[0])
                    try:
                        return await original(*args, **kwargs)
                    finally:
                        in_flight[0] -= 1

                worker.load = counted
            phase = ["start-up, first"]
            manager.serving = False  # as during start()'s preloads
            await manager.ensure_loaded(service.variants["fixture.rf-64"])
            phase = ["start-up, second"]  # a variant is loaded already, but nothing is served yet
            await manager.ensure_loaded(service.variants["fixture.rf-16"])
            for key in ("fixture.rf-64", "fixture.rf-16"):
                await manager.unload(key)
            manager.serving = True
            phase = ["serving, one caller"]
            await manager.ensure_loaded(service.variants["fixture.rf-64"])
            await manager.unload("fixture.rf-64")
            phase = ["serving, two callers"]
            await asyncio.gather(manager.ensure_loaded(service.variants["fixture.rf-64"]),
                                 manager.ensure_loaded(service.variants["fixture.rf-16"]))  # fmt: skip
            holders = {key: sorted(worker.worker_id for worker in manager.workers.values() if key in worker.loaded_variants)
                       for key in ("fixture.rf-64", "fixture.rf-16")}  # fmt: skip
        finally:
            await service.stop()
        return peaks, holders

    peaks, holders = asyncio.run(scenario())
    assert peaks == {"start-up, first": 2, "start-up, second": 2, "serving, one caller": 1, "serving, two callers": 1}
    assert holders == {"fixture.rf-64": ["w0", "w1"], "fixture.rf-16": ["w0", "w1"]}


def test_a_worker_that_fails_its_load_does_not_keep_the_variant_from_the_others(fixture_repository_path):
    from shoal.runtime.errors import WorkerFailedError

    class FakeWorker:
        def __init__(self, worker_id, fails):
            self.worker_id, self.fails, self.alive, self.loaded_variants, self.loading = worker_id, fails, True, {}, 0

        async def load(self, key, *args, **kwargs):
            await asyncio.sleep(0.01)
            if self.fails:
                raise WorkerFailedError(f"worker {self.worker_id} exited (code -9) while holding this request")
            self.loaded_variants[key] = 1.0
            return {"load_ms": 1.0}

    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=(), num_workers=1, intra_op_threads=1))
        await service.start()
        manager = service.manager
        real = dict(manager.workers)
        try:
            fakes = [FakeWorker("f0", fails=True), FakeWorker("f1", fails=False)]
            manager.workers = {fake.worker_id: fake for fake in fakes}
            for fake in fakes:
                manager._cache[fake.worker_id] = type(next(iter(manager._cache.values())))()
            try:
                await manager.ensure_loaded(service.variants["fixture.rf-64"])
            except WorkerFailedError as error:
                raised = str(error)
            else:
                raised = None
            return raised, [sorted(fake.loaded_variants) for fake in fakes]
        finally:
            manager.workers = real
            await service.stop()

    raised, loaded = asyncio.run(scenario())
    assert raised is not None and "f0" in raised  # the failure is still reported
    assert loaded == [[], ["fixture.rf-64"]]  # but the other worker got the variant


def test_first_only_returns_once_one_worker_holds_the_variant_and_the_rest_load_behind(fixture_repository_path):
    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=(), num_workers=2, intra_op_threads=1))
        await service.start()
        manager = service.manager
        try:
            await manager.ensure_loaded(service.variants["fixture.rf-64"], first_only=True)
            on_return = sorted(worker.worker_id for worker in manager.workers.values() if "fixture.rf-64" in worker.loaded_variants)
            background = list(manager._background_loads)
            await asyncio.gather(*background)
            afterwards = sorted(worker.worker_id for worker in manager.workers.values() if "fixture.rf-64" in worker.loaded_variants)
            # An unload while the others still load behind: they stop, and a load it overtook is undone.
            behind, release = manager.workers["w1"], asyncio.Event()
            original = behind.load

            async def held_load(*args, **kwargs):  # w1's load behind is under way until released
                await release.wait()
                return await original(*args, **kwargs)

            behind.load = held_load
            await manager.ensure_loaded(service.variants["fixture.rf-16"], first_only=True)
            await manager.unload("fixture.rf-16")  # w0 drops it; w1's load is still going
            release.set()
            await asyncio.gather(*manager._background_loads)
            after_unload = sorted(worker.worker_id for worker in manager.workers.values() if "fixture.rf-16" in worker.loaded_variants)
        finally:
            await service.stop()
        return on_return, len(background), afterwards, after_unload

    on_return, background, afterwards, after_unload = asyncio.run(scenario())
    assert len(on_return) == 1 and background == 1
    assert afterwards == ["w0", "w1"]
    assert after_unload == []



def test_an_unload_during_the_first_load_of_an_edge_plan_wins(fixture_repository_path):
    """`ensure_loaded(first_only=True)` with an unload arriving while its first worker still
    loads: that load is undone and nothing loads behind it (the variant ends on no worker)."""

    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=(), num_workers=2, intra_op_threads=1))
        await service.start()
        manager = service.manager
        try:
            started, release = asyncio.Event(), asyncio.Event()
            for worker in manager.workers.values():
                original = worker.load

                async def held_load(*args, original=original, **kwargs):
                    started.set()
                    await release.wait()
                    return await original(*args, **kwargs)

                worker.load = held_load
            first = asyncio.create_task(manager.ensure_loaded(service.variants["fixture.rf-16"], first_only=True))
            await started.wait()
            await manager.unload("fixture.rf-16")
            release.set()
            await first
            background = len(manager._background_loads)
            await asyncio.gather(*manager._background_loads)
            holders = sorted(worker.worker_id for worker in manager.workers.values() if "fixture.rf-16" in worker.loaded_variants)
            gauge = service.metrics.registry.get_sample_value("shoal_variant_loaded", {"variant": "fixture.rf-16"})
        finally:
            await service.stop()
        return background, holders, gauge

    background, holders, gauge = asyncio.run(scenario())
    assert background == 0 and holders == []
    assert gauge == 0  # the undone load does not leave the variant shown as loaded


def test_the_loaded_gauge_follows_evictions_and_loads(fixture_repository_path):
    """`shoal_variant_loaded` is what the live workers hold, whoever unloaded: an LRU eviction
    (a cache with room for one variant) takes the evicted variant's gauge to 0."""

    async def scenario():
        config = ServeConfig(repository=fixture_repository_path, preload=(), num_workers=1, intra_op_threads=1, cache_bytes_per_worker=1)
        service = InferenceService(config)
        await service.start()

        def gauge(key):
            return service.metrics.registry.get_sample_value("shoal_variant_loaded", {"variant": key})

        try:
            await service.manager.ensure_loaded(service.variants["fixture.rf-16"])
            first = gauge("fixture.rf-16")
            await service.manager.ensure_loaded(service.variants["fixture.rf-64"])  # evicts rf-16: no room for both
            held = sorted(next(iter(service.manager.workers.values())).loaded_variants)
            after = gauge("fixture.rf-16"), gauge("fixture.rf-64")
        finally:
            await service.stop()
        return first, held, after

    first, held, after = asyncio.run(scenario())
    assert first == 1
    assert held == ["fixture.rf-64"]
    assert after == (0, 1)


def test_the_loaded_gauge_reads_0_while_a_replacement_worker_reloads_and_1_once_it_serves(fixture_repository_path):
    """A killed worker's variants read 0 from its exit until the scheduler has its replacement
    (it serves nothing while it reloads them), then 1."""
    import os
    import signal
    import time

    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, num_workers=1, intra_op_threads=1))
        await service.start()
        keys = sorted(service.variants)

        def gauge(key):
            return service.metrics.registry.get_sample_value("shoal_variant_loaded", {"variant": key})

        try:
            before = {key: gauge(key) for key in keys}
            victim = service.manager.workers["w0"]
            os.kill(victim.pid, signal.SIGKILL)
            shown_unserved, seen_zero = set(), set()
            started = time.monotonic()
            while time.monotonic() - started < 30:
                await asyncio.sleep(0.002)
                for key in keys:
                    if gauge(key) == 1 and not service.scheduler.workers_for(key):
                        shown_unserved.add(key)
                    if gauge(key) == 0:
                        seen_zero.add(key)
                replacement = service.manager.workers["w0"]
                if replacement is not victim and replacement in service.scheduler.workers:
                    break
            after = {key: gauge(key) for key in keys}
        finally:
            await service.stop()
        return keys, before, shown_unserved, seen_zero, after

    keys, before, shown_unserved, seen_zero, after = asyncio.run(scenario())
    assert set(before.values()) == {1}
    assert shown_unserved == set()
    assert seen_zero == set(keys)  # the exit was shown
    assert set(after.values()) == {1}
