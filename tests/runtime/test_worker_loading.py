"""A worker process counts the loads it has in flight, so that the batcher does not send it a
batch that would wait behind one (see Scheduler._worker_loop)."""

import asyncio

import pytest

from shoal.zoo.repository import ModelRepository
from shoal.runtime.errors import ModelLoadError
from shoal.runtime.worker_handle import WorkerHandle


def test_a_worker_counts_its_load_while_it_is_in_flight_and_after_a_failed_one(fixture_repository_path, tmp_path):
    path = ModelRepository(fixture_repository_path).model_path("fixture", "rf-64")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")

    async def scenario():
        handle = WorkerHandle("w-load")
        await handle.start()
        try:
            load = asyncio.create_task(handle.load("fixture.rf-64", str(path), "images", "logits", (3, 64, 64)))
            await asyncio.sleep(0)  # the load message is on its way
            during = handle.loading
            await load
            after = handle.loading
            with pytest.raises(ModelLoadError):
                await handle.load("fixture.broken", str(broken), "images", "logits", (3, 64, 64))
            return during, after, handle.loading, sorted(handle.loaded_variants)
        finally:
            await handle.stop()

    during, after, after_failure, loaded = asyncio.run(scenario())
    assert (during, after, after_failure) == (1, 0, 0)
    assert loaded == ["fixture.rf-64"]
