"""The controller and autoscaler applied to a running service, tick by tick (in-process, real workers)."""

import asyncio

import numpy as np

from shoal.runtime.autoscaler import Autoscaler
from shoal.runtime.service import InferenceService
from shoal.runtime.worker_manager import ServeConfig


def _scenario(fixture_repository_path, *, keep_asking: bool):
    async def run():
        config = ServeConfig(repository=fixture_repository_path, preload=("fixture.rf-16",), num_workers=1, intra_op_threads=1,
                             policy="modelless", autoscale=True, autoscale_hold_s=0.0)  # fmt: skip
        service = InferenceService(config)
        await service.start()
        autoscaler = Autoscaler(service, interval_s=0.25)
        image = np.zeros((1, 3, 64, 64), dtype=np.uint8)
        family = service.families["fixture"]
        try:
            now_s = 0.0
            for _ in range(8):
                if keep_asking:
                    await service.infer("fixture.rf-16", {family.input_name: image}, {"slo_ms": 5000}, [])
                autoscaler.observe()
                await autoscaler.tick(now_s)
                now_s += 10.0  # past any hold
            return service.replica_counts()["fixture.rf-16"]
        finally:
            await service.stop()

    return asyncio.run(run())


def test_requests_naming_a_variant_keep_it_and_without_them_it_is_scaled_down(fixture_repository_path):
    """The planner sees family demand only: requests that name the variant itself must not lose
    it to a scale-down (they got 503s from ~2 s on). Without them, it scales down to 0."""
    assert _scenario(fixture_repository_path, keep_asking=True) == 1
    assert _scenario(fixture_repository_path, keep_asking=False) == 0


def test_a_model_file_removed_under_the_server_leaves_the_controller_ticking_and_its_load_says_why(fixture_repository_path, tmp_path):
    """`shoal zoo remove` on a running server: the controller's ticks used to fail for every
    variant (FileNotFoundError) and a load of the removed one was a generic 500."""
    import shutil

    from shoal.runtime.controller import Controller
    from shoal.runtime.errors import ModelLoadError

    repository = tmp_path / "repo"
    shutil.copytree(fixture_repository_path, repository)

    async def run():
        service = InferenceService(ServeConfig(repository=repository, preload=("fixture.rf-16",), num_workers=1, intra_op_threads=1))
        await service.start()
        controller = Controller(service, interval_s=0.25)
        try:
            (repository / "fixture" / "rf-64" / "model.onnx").unlink()
            await controller.tick(0.0)
            await controller.tick(1.0)
            planned = [usage.key for usage in controller.observe(2.0).variants]
            try:
                await service.load_model("fixture.rf-64")
            except ModelLoadError as error:
                return planned, error
            return planned, None
        finally:
            await service.stop()

    planned, error = asyncio.run(run())
    assert "fixture.rf-64" not in planned and "fixture.rf-16" in planned
    assert error is not None and "fixture.rf-64" in error.message and "cannot be read" in error.message


def test_model_less_selection_does_not_load_back_what_an_operator_unloaded(fixture_repository_path):
    """Only an explicit load brings back a variant an operator unloaded (as for the controller
    and the autoscaler); with every variant unloaded, a family query is a 503 that says so."""
    from shoal.runtime.errors import ModelNotReadyError, RequirementsUnmetError

    async def run():
        config = ServeConfig(repository=fixture_repository_path, preload=("fixture.rf-16", "fixture.rf-64"), num_workers=1,
                             intra_op_threads=1, policy="modelless")  # fmt: skip
        service = InferenceService(config)
        await service.start()
        family = service.families["fixture"]
        image = np.zeros((1, 3, 128, 128), dtype=np.uint8)
        try:
            await service.unload_model("fixture.rf-64")  # the most accurate one
            only_rf_64 = service.variants["fixture.rf-64"].variant.accuracy
            try:
                await service.infer("fixture", {family.input_name: image}, {"slo_ms": 5000, "min_accuracy": only_rf_64}, [])
                first = "answered"
            except RequirementsUnmetError:
                first = "unmet"
            loaded_after = sorted(key for key in service.variants if service.scheduler.workers_for(key))
            await service.unload_model("fixture")
            refusal = None
            try:
                await service.infer("fixture", {family.input_name: image}, {"slo_ms": 5000}, [])
            except ModelNotReadyError as error:
                refusal = error.message
            # An operator's replica count is a load too: the variant is the family's again
            # (it stayed marked unloaded, and family queries refused it).
            await service.set_replicas("fixture.rf-16", 1)
            again = await service.infer("fixture", {family.input_name: image}, {"slo_ms": 5000}, [])
            return first, loaded_after, refusal, again.parameters["shoal_variant"]
        finally:
            await service.stop()

    first, loaded_after, refusal, again = asyncio.run(run())
    assert first == "unmet" and "fixture.rf-64" not in loaded_after
    assert refusal is not None and "unloaded by an operator" in refusal
    assert again == "fixture.rf-16"


def test_a_family_named_like_another_family_s_variant_is_refused_at_start_naming_both(fixture_repository_path, tmp_path):
    """Names may hold dots: a family `fixture.rf-16` would hide variant rf-16 of `fixture` (and
    its variant `v` would be `fixture.rf-16.v`). The server refuses to start, naming both."""
    import shutil

    import pytest

    from shoal.core.errors import InvalidInputError

    repository = tmp_path / "repo"
    shutil.copytree(fixture_repository_path, repository)
    clash = repository / "fixture.rf-16"
    clash.mkdir()
    shutil.copy(repository / "fixture" / "validation.npz", clash / "validation.npz")
    (clash / "family.yaml").write_text((repository / "fixture" / "family.yaml").read_text().replace("name: fixture\n", "name: fixture.rf-16\n", 1))
    (clash / "v").mkdir()
    shutil.copy(repository / "fixture" / "rf-16" / "model.onnx", clash / "v" / "model.onnx")
    (clash / "v" / "variant.yaml").write_text(
        (repository / "fixture" / "rf-16" / "variant.yaml").read_text().replace("name: rf-16\n", "name: v\n").replace("family: fixture\n", "family: fixture.rf-16\n")
    )

    async def run():
        service = InferenceService(ServeConfig(repository=repository, preload=(), num_workers=1, intra_op_threads=1))
        try:
            await service.start()
        finally:
            await service.stop()

    with pytest.raises(InvalidInputError, match=r"'fixture.rf-16' is taken already by variant 'rf-16' of family 'fixture'"):
        asyncio.run(run())


def test_a_family_with_nothing_loaded_gets_a_variant_loaded_by_queries_a_load_does_not_fit(fixture_repository_path):
    """Every such query was a 429 and nothing ever loaded a variant (refused queries were no
    variant's use): the controller now loads the variant they would take."""
    from shoal.runtime.controller import Controller
    from shoal.runtime.errors import OverloadedError, RequirementsUnmetError

    async def run():
        config = ServeConfig(repository=fixture_repository_path, num_workers=1, intra_op_threads=1, policy="modelless")
        service = InferenceService(config)
        await service.start()  # every variant loaded (and profiled), then
        for key in service.variants:  # unloaded as the controller does idle ones
            await service.manager.unload(key)
        controller = Controller(service, interval_s=1.0, idle_unload_after_s=300.0)
        family = service.families["fixture"]
        image = np.zeros((1, 3, 128, 128), dtype=np.uint8)
        try:
            try:
                await service.infer("fixture", {family.input_name: image}, {"slo_ms": 2.0}, [])  # far below a load
                first = "answered"
            except (OverloadedError, RequirementsUnmetError) as error:
                first = type(error).__name__
            await controller.tick(0.0)
            return first, sorted(key for key, count in service.replica_counts().items() if count)
        finally:
            await service.stop()

    first, loaded = asyncio.run(run())
    assert first in ("OverloadedError", "RequirementsUnmetError")
    assert len(loaded) >= 1
