"""A worker process counts the loads it has in flight (see Scheduler._left_to_others) and runs
batches while it loads."""

import asyncio

import numpy as np
import pytest

from shoal.runtime.errors import ModelLoadError
from shoal.runtime.worker import ModelHost
from shoal.runtime.worker_handle import WorkerHandle
from shoal.zoo.repository import ModelRepository


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


def test_a_worker_runs_batches_of_a_variant_it_holds_while_it_loads_another(fixture_repository_path):
    """Loads run on a thread beside the batches; their replies and the batches' are matched by
    number, whichever comes first, and a batch's outputs are the model's."""
    import onnxruntime

    repository = ModelRepository(fixture_repository_path)
    small, large = repository.model_path("fixture", "rf-16"), repository.model_path("fixture", "rf-64")
    item = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(small), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"images": item[None]})[0]

    async def scenario():
        handle = WorkerHandle("w-beside")
        await handle.start()
        try:
            await handle.load("fixture.rf-16", str(small), "images", "logits", (3, 16, 16), warmup=1)
            # A long profile keeps the load in flight for a while (~1 s here).
            load = asyncio.create_task(handle.load("fixture.rf-64", str(large), "images", "logits", (3, 64, 64),
                                                   profile_batch_sizes=[1, 8, 16], profile_repeats=40))  # fmt: skip
            await asyncio.sleep(0)
            outputs_during_load = []
            while not load.done():
                outputs, _ = await handle.run("fixture.rf-16", [item])
                if not load.done():
                    outputs_during_load.append(outputs)
            reply = await load
            return outputs_during_load, reply, sorted(handle.loaded_variants)
        finally:
            await handle.stop()

    outputs_during_load, reply, loaded = asyncio.run(scenario())
    assert len(outputs_during_load) >= 3  # before: none, the batch waited in the pipe behind the load
    assert reply["disturbed_samples"] > 0  # and the profile knows it ran beside them
    for outputs in outputs_during_load:
        np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    assert reply["variant"] == "fixture.rf-64" and set(reply["latency_ms"]) == {"1", "8", "16"}
    assert loaded == ["fixture.rf-16", "fixture.rf-64"]


def test_an_unload_keeps_its_order_with_the_batches(fixture_repository_path):
    """A batch sent before an unload still finds its variant, and none is sent after it: the
    variant is forgotten before the unload's message goes (the scheduler dispatches only to
    workers whose loaded_variants hold it)."""
    path = ModelRepository(fixture_repository_path).model_path("fixture", "rf-16")
    item = np.ones((3, 16, 16), np.float32)

    async def scenario():
        handle = WorkerHandle("w-unload")
        await handle.start()
        try:
            await handle.load("fixture.rf-16", str(path), "images", "logits", (3, 16, 16), warmup=1)
            batch = asyncio.create_task(handle.run("fixture.rf-16", [item]))
            await asyncio.sleep(0)  # its message is in the pipe, ahead of the unload's
            unload = asyncio.create_task(handle.unload("fixture.rf-16"))
            await asyncio.sleep(0)  # the unload's message is sent; its reply is not in yet
            held_while_unloading = "fixture.rf-16" in handle.loaded_variants
            outputs, _ = await batch
            await unload
            return outputs.shape, held_while_unloading, sorted(handle.loaded_variants)
        finally:
            await handle.stop()

    shape, held_while_unloading, loaded = asyncio.run(scenario())
    assert shape[0] == 1 and not held_while_unloading and loaded == []


def test_a_profile_sample_knows_whether_a_batch_ran_beside_it():
    host = ModelHost("cpu", 1)

    def quiet():
        pass

    def batch_begins_and_ends():
        host._batches_begun += 1
        host._batches_done += 1

    def batch_still_running():
        host._batches_begun += 1

    assert host._profile_sample_ms(quiet)[1] is False
    assert host._profile_sample_ms(batch_begins_and_ends)[1] is True
    assert host._profile_sample_ms(batch_still_running)[1] is True
    assert host._profile_sample_ms(quiet)[1] is True  # that batch still runs when the next sample starts
    host._batches_done += 1
    assert host._profile_sample_ms(quiet)[1] is False


def test_a_profile_taken_mostly_beside_batches_does_not_replace_a_quieter_one():
    from types import SimpleNamespace

    from shoal.core.models import Family, Variant
    from shoal.runtime.metrics import ServingMetrics
    from shoal.runtime.service import InferenceService, ServedVariant

    served = ServedVariant(Family(name="f", num_classes=3, source_image_px=16), Variant(name="v", family="f", input_size_px=16), "unused.onnx")
    service = SimpleNamespace(variants={"f.v": served}, metrics=ServingMetrics(), config=SimpleNamespace(device="cpu"))

    def loaded(batch1_ms: float, disturbed: int) -> float:
        InferenceService._on_variant_loaded(service, "f.v", {"load_ms": 5.0, "latency_ms": {"1": [batch1_ms] * 4}, "disturbed_samples": disturbed})
        return served.batch_latency_ms(1)

    assert loaded(4.0, disturbed=4) == pytest.approx(4.0)  # nothing better known: taken
    assert loaded(2.0, disturbed=1) == pytest.approx(2.0)  # mostly quiet: replaces it
    assert loaded(9.0, disturbed=3) == pytest.approx(2.0)  # mostly beside batches: the quiet one stays
