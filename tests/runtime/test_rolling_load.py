"""Loading a variant while the server serves: one worker at a time, so that the others keep
serving (WorkerManager._load_rolling); at start-up, with nothing to serve yet, all at once."""

import asyncio

from shoal.runtime.service import InferenceService
from shoal.runtime.worker_manager import ServeConfig


def test_a_variant_loads_on_all_workers_at_once_at_start_up_and_one_at_a_time_once_serving(fixture_repository_path):
    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=(), num_workers=2, intra_op_threads=1))
        await service.start()
        in_flight, peaks = [0], []
        try:
            for worker in service.manager.workers.values():
                original = worker.load

                async def counted(*args, original=original, **kwargs):
                    in_flight[0] += 1
                    peaks[-1] = max(peaks[-1], in_flight[0])
                    try:
                        return await original(*args, **kwargs)
                    finally:
                        in_flight[0] -= 1

                worker.load = counted
            for key in ("fixture.rf-64", "fixture.rf-16"):
                peaks.append(0)
                await service.manager.ensure_loaded(service.variants[key])
            holders = {key: sorted(worker.worker_id for worker in service.manager.workers.values() if key in worker.loaded_variants)
                       for key in ("fixture.rf-64", "fixture.rf-16")}  # fmt: skip
        finally:
            await service.stop()
        return peaks, holders

    peaks, holders = asyncio.run(scenario())
    assert peaks == [2, 1]  # nothing served yet: both at once; then one at a time
    assert holders == {"fixture.rf-64": ["w0", "w1"], "fixture.rf-16": ["w0", "w1"]}
