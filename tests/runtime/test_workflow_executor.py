"""The workflow executor on real worker processes: planned shares, correct outputs, joins, bad input."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from shoal.core.errors import InvalidInputError
from shoal.core.models import Device
from shoal.experiments.workflow_run import run_workflow_load
from shoal.profiler.session import create_session
from shoal.runtime.errors import BadRequestError
from shoal.runtime.scheduler import monotonic_ms
from shoal.runtime.workflow import (
    SourceSpec,
    StageModel,
    TaskDeployment,
    WorkflowDeployment,
    WorkflowExecutor,
    load_deployment,
    save_deployment,
)
from shoal.runtime.workflow.deploy import PipelineWorker, build_classifier_pipeline
from shoal.zoo.preprocess import resize_images
from shoal.zoo.repository import ModelRepository

from .conftest import start_server, stop_server

# Stage speeds stated, not measured, so that the plan needs several workers per task on any
# machine: a feature stage carries 100 req/s per worker, a head 500 req/s.
STATED_LATENCY_MS = {(task, variant): (10.0 if task == "features" else 2.0) for task in ("features", "classify") for variant in ("rf-16", "rf-32", "rf-64")}


@pytest.fixture(scope="module")
def pipeline(fixture_repository_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    workers = [PipelineWorker(f"w{i}", 1.0) for i in range(5)]
    deployment, problem, plan = build_classifier_pipeline(
        ModelRepository(fixture_repository_path), "fixture", out, workers=workers, rate_rps=250.0,
        accuracy_target=0.0, slo_ms=60_000.0, latency_ms=STATED_LATENCY_MS,
    )
    save_deployment(deployment, out / "deployment.json")
    return out / "deployment.json", plan


def test_the_plan_splits_the_feature_stage_over_three_workers(pipeline):
    path, plan = pipeline
    deployment, _ = load_deployment(path)
    assert plan.status == "optimal"
    assert sorted(deployment.tasks["features"].load_shares_rps.values()) == pytest.approx([50.0, 100.0, 100.0])
    assert sum(deployment.tasks["classify"].load_shares_rps.values()) == pytest.approx(250.0)


def test_per_worker_traffic_matches_the_planned_shares_and_answers_are_the_models(pipeline, fixture_repository_path):
    path, plan = pipeline
    repository = ModelRepository(fixture_repository_path)
    result = run_workflow_load(path, requests=2000, concurrency=16, repository=repository)
    assert result["answered"] == 2000 and result["failures"] == {}
    for task, workers in result["traffic"].items():
        for worker, row in workers.items():
            assert row["measured_share"] == pytest.approx(row["planned_share"], rel=0.05), (task, worker)
    assert sum(row["items"] for row in result["traffic"]["features"].values()) == 2000
    # head(backbone(x)) is the registered variant, so the live accuracy is its measured accuracy.
    variant = plan.model_assignment["classify"]
    assert result["measured_accuracy"] == pytest.approx(repository.load_variant("fixture", variant).accuracy, abs=1e-9)


def _average_model(path, num_classes: int) -> None:
    """[batch, 2 x classes] (two models' logits side by side) -> their mean [batch, classes]."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["joined", "shape"], ["pairs"]),
            helper.make_node("ReduceMean", ["pairs"], ["mean"], axes=[1], keepdims=0),
        ],
        "average",
        [helper.make_tensor_value_info("joined", TensorProto.FLOAT, ["batch", 2 * num_classes])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", num_classes])],
        [numpy_helper.from_array(np.array([0, 2, num_classes], dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_join_waits_for_both_parents_of_the_same_request(fixture_repository_path, tmp_path):
    repository = ModelRepository(fixture_repository_path)
    num_classes = repository.load_family("fixture").num_classes
    _average_model(tmp_path / "average.onnx", num_classes)

    def whole(variant: str, size: int) -> StageModel:
        return StageModel(path=str(repository.model_path("fixture", variant)), input_name="images", output_name="logits",
                          item_shape=(3, size, size), resize_to_px=size)

    deployment = WorkflowDeployment(
        name="ensemble",
        sources={"camera": SourceSpec(item_shape=(3, 64, 64), rate_rps=10.0)},
        tasks={
            "small": TaskDeployment(inputs=("camera",), variant="rf-16", model=whole("rf-16", 16), load_shares_rps={"w0": 10.0}),
            "large": TaskDeployment(inputs=("camera",), variant="rf-32", model=whole("rf-32", 32), load_shares_rps={"w1": 10.0}),
            "vote": TaskDeployment(
                inputs=("small", "large"), variant="mean",
                model=StageModel(path="average.onnx", input_name="joined", output_name="mean", item_shape=(2 * num_classes,)),
                load_shares_rps={"w0": 2.5, "w1": 7.5},  # a worker shared with another task
            ),
        },
        slo_ms=60_000.0,
    )
    images = np.random.default_rng(1).integers(0, 256, size=(40, 3, 64, 64), dtype=np.uint8)

    async def run():
        executor = WorkflowExecutor(deployment, tmp_path)
        await executor.start()
        try:
            answers = await asyncio.gather(*(executor.infer({"camera": images[i : i + 4]}) for i in range(0, 40, 4)))
        finally:
            await executor.stop()
        return answers, executor.traffic_report()

    answers, traffic = asyncio.run(run())
    assert all(set(answer.outputs) == {"vote"} for answer in answers)
    got = np.concatenate([answer.outputs["vote"] for answer in answers])
    cpu = Device.parse("cpu")
    floats = images.astype(np.float32) / 255.0
    (small,) = create_session(repository.model_path("fixture", "rf-16"), cpu, intra_op_threads=1).run(None, {"images": resize_images(floats, 16)})
    (large,) = create_session(repository.model_path("fixture", "rf-32"), cpu, intra_op_threads=1).run(None, {"images": resize_images(floats, 32)})
    np.testing.assert_allclose(got, (small + large) / 2.0, rtol=1e-5, atol=1e-5)
    assert traffic["vote"]["w0"]["items"] == 10 and traffic["vote"]["w1"]["items"] == 30


def _minimal(**changes) -> dict:
    document = {
        "name": "flow",
        "sources": {"camera": {"item_shape": [3, 16, 16], "rate_rps": 5}},
        "tasks": {"classify": {"inputs": ["camera"], "variant": "v", "load_shares_rps": {"w0": 5},
                               "model": {"path": "m.onnx", "input_name": "images", "output_name": "logits", "item_shape": [3, 16, 16]}}},
        "slo_ms": 100,
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks": {"classify": {**_minimal()["tasks"]["classify"], "inputs": ["nowhere"]}}}, "neither a source nor a task"),
        ({"tasks": {"a": {**_minimal()["tasks"]["classify"], "inputs": ["b"]}, "b": {**_minimal()["tasks"]["classify"], "inputs": ["a"]}}}, "cycle"),
        ({"tasks": {"classify": {**_minimal()["tasks"]["classify"], "load_shares_rps": {"w0": 0}}}}, "must be a finite number > 0"),
        ({"slo_ms": -1}, "slo_ms"),
        # Non-finite numbers made the router's counters NaN (everything to one worker); a
        # device no worker understands killed the worker process at its start.
        ({"slo_ms": float("inf")}, "slo_ms: Input should be a finite number"),
        ({"tasks": {"classify": {**_minimal()["tasks"]["classify"], "load_shares_rps": {"w0": float("inf")}}}}, "must be a finite number > 0"),
        ({"tasks": {"classify": {**_minimal()["tasks"]["classify"], "load_shares_rps": {"w0": 1e308, "w1": 1e308}}}}, "add up past"),
        ({"worker_devices": {"w0": "tpu"}}, "worker 'w0': device 'tpu' is not understood"),
        ({"name": "../escape"}, "not a valid name"),
        ({"sources": {"camera": {"item_shape": [3, 0, 16], "rate_rps": 5}}}, "every dimension must be >= 1"),
        # a source-fed stage whose items would never fit it: every request would fail there
        ({"sources": {"camera": {"item_shape": [3, 32, 32], "rate_rps": 5}}}, r"item_shape is \[3, 16, 16\] but source 'camera' gives it \[3, 32, 32\]"),
        ({"tasks": {"classify": {**_minimal()["tasks"]["classify"], "model": {**_minimal()["tasks"]["classify"]["model"], "resize_to_px": 8}}}},
         r"gives it \[3, 8, 8\] after resize_to_px"),
        ({"sources": {"camera": {"item_shape": [16, 16], "rate_rps": 5}},
          "tasks": {"classify": {**_minimal()["tasks"]["classify"], "model": {**_minimal()["tasks"]["classify"]["model"], "resize_to_px": 16}}}},
         "resizes square images"),
    ],
)
def test_bad_deployment_files_name_the_field(tmp_path, changes, message):
    (tmp_path / "m.onnx").write_bytes(b"")
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(_minimal(**changes)))
    with pytest.raises(InvalidInputError, match=message):
        load_deployment(path)


def test_a_stage_model_onnx_runtime_refuses_is_an_error_naming_the_task(pipeline, tmp_path):
    """A wrong input name in the deployment: ModelLoadError, which the command line showed as a
    traceback, is the deployment's InvalidInputError."""
    import shutil

    path, _ = pipeline
    shutil.copytree(path.parent, tmp_path / "pipeline")
    document = json.loads((tmp_path / "pipeline" / path.name).read_text())
    document["tasks"]["classify"]["model"]["input_name"] = "nope"
    (tmp_path / "pipeline" / path.name).write_text(json.dumps(document))
    deployment, base = load_deployment(tmp_path / "pipeline" / path.name)

    async def run():
        executor = WorkflowExecutor(deployment, base)
        with pytest.raises(InvalidInputError, match=r"tasks.classify.model \(.*\) could not be loaded: .*nope"):
            await executor.start()
        return executor.started, executor.workers

    started, workers = asyncio.run(run())
    assert not started and not any(worker.alive for worker in workers.values())


def test_a_missing_stage_model_is_named(tmp_path):
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps(_minimal()))
    with pytest.raises(InvalidInputError, match=r"tasks.classify.model.path 'm.onnx' does not exist"):
        load_deployment(path)


def test_served_over_kserve_http_with_bad_input_answered_400(pipeline, fixture_repository_path):
    path, plan = pipeline
    server = start_server(fixture_repository_path, "--workflow", str(path))
    try:
        metadata = httpx.get(f"{server.url}/v2/models/fixture-pipeline").json()
        assert metadata["platform"] == "shoal_workflow" and metadata["inputs"][0]["name"] == "camera"
        assert httpx.get(f"{server.url}/v2/models/fixture-pipeline/ready").status_code == 200
        images = np.random.default_rng(2).random((2, 3, 128, 128), dtype=np.float32)
        body = {"inputs": [{"name": "camera", "datatype": "FP32", "shape": list(images.shape), "data": images.ravel().tolist()}]}
        answer = httpx.post(f"{server.url}/v2/models/fixture-pipeline/infer", json=body, timeout=30.0)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        assert outputs["classify"]["shape"] == [2, ModelRepository(fixture_repository_path).load_family("fixture").num_classes]
        bad = {"inputs": [{"name": "camera", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}]}
        refused = httpx.post(f"{server.url}/v2/models/fixture-pipeline/infer", json=bad, timeout=30.0)
        assert refused.status_code == 400 and "must have shape [batch, 3, 128, 128]" in refused.json()["error"]
    finally:
        stop_server(server)


def test_served_over_kserve_grpc_with_config_and_statistics_on_both_protocols(pipeline, fixture_repository_path):
    """A Triton client finds a served workflow as it finds a model, over either protocol."""
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    path, _ = pipeline
    # The server's batching options hold for its workflow too (they were left at the executor's defaults).
    server = start_server(fixture_repository_path, "--workflow", str(path), "--max-batch-size", "8")
    try:
        grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        http = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert grpc.is_model_ready("fixture-pipeline")
        assert grpc.get_model_metadata("fixture-pipeline", as_json=True)["platform"] == "shoal_workflow"
        num_classes = ModelRepository(fixture_repository_path).load_family("fixture").num_classes
        images = np.random.default_rng(4).random((3, 3, 128, 128), dtype=np.float32)
        tensor = triton_grpc.InferInput("camera", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        answer = grpc.infer("fixture-pipeline", [tensor], parameters={"slo_ms": 60_000})
        over_grpc = answer.as_numpy("classify")
        assert over_grpc.shape == (3, num_classes) and float(answer.get_response(as_json=True)["parameters"]["shoal_workflow_ms"]["double_param"]) > 0
        # the same images over HTTP give the same numbers
        http_tensor = triton_http.InferInput("camera", list(images.shape), "FP32")
        http_tensor.set_data_from_numpy(images)
        np.testing.assert_allclose(http.infer("fixture-pipeline", [http_tensor]).as_numpy("classify"), over_grpc, rtol=1e-5, atol=1e-6)
        bad = triton_grpc.InferInput("camera", [1, 3, 8, 8], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
        with pytest.raises(triton_grpc.InferenceServerException, match=r"must have shape \[batch, 3, 128, 128\]") as refused:
            grpc.infer("fixture-pipeline", [bad])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        wrong_output = triton_grpc.InferRequestedOutput("features")
        with pytest.raises(triton_grpc.InferenceServerException, match="has outputs"):
            grpc.infer("fixture-pipeline", [tensor], outputs=[wrong_output])
        # configuration: the sources and sinks without the batch dimension
        for config in (http.get_model_config("fixture-pipeline"), grpc.get_model_config("fixture-pipeline", as_json=True)["config"]):
            assert config["platform"] == "shoal_workflow" and [int(dim) for dim in config["input"][0]["dims"]] == [3, 128, 128]
            assert config["output"][0]["name"] == "classify"
            # as for a model: the most items one request may carry, and the batches its stages form
            assert int(config["max_batch_size"]) == 256 and [int(size) for size in config["dynamic_batching"]["preferred_batch_size"]] == [8]
        # statistics: two requests answered (6 items); the bad ones are the client's, not failures
        for entries in (http.get_inference_statistics("fixture-pipeline")["model_stats"],
                        grpc.get_inference_statistics("fixture-pipeline", as_json=True)["model_stats"]):  # fmt: skip
            (entry,) = entries
            assert int(entry["inference_count"]) == 6 and int(entry["inference_stats"]["success"]["count"]) == 2, entry["inference_stats"]
            assert int(entry["inference_stats"]["compute_infer"]["ns"]) > 0 and int(entry["inference_stats"]["fail"].get("count", 0)) == 0
        everything = {entry["name"] for entry in http.get_inference_statistics()["model_stats"]}
        assert "fixture-pipeline" in everything and "fixture.rf-16" in everything
    finally:
        stop_server(server)


def test_stage_actors_on_ray_ask_for_the_device_resource_the_server_was_given(pipeline):
    # `--ray-device-resource` reached the model workers but not the workflow's stage actors,
    # which could land on nodes without the accelerator their plan was made for.
    from shoal.runtime.ray_backend import worker_resources

    path, _ = pipeline
    deployment, base = load_deployment(path)
    executor = WorkflowExecutor(deployment, base, backend="ray", ray_device_resource="a100")  # Ray starts only at start()
    assert executor.backend.device_resource == "a100"
    assert worker_resources("cpu", 1, executor.backend.device_resource) == {"CPU": 1.0, "a100": 1.0}


def test_inputs_are_checked_before_anything_runs(pipeline):
    path, _ = pipeline
    deployment, base = load_deployment(path)
    executor = WorkflowExecutor(deployment, base)
    with pytest.raises(BadRequestError, match="takes inputs \\['camera'\\]"):
        executor.check_inputs({"image": np.zeros((1, 3, 128, 128), np.float32)})
    with pytest.raises(BadRequestError, match="same number"):
        executor.check_inputs({"camera": np.zeros((0, 3, 128, 128), np.float32)})
    assert executor.check_inputs({"camera": np.zeros((executor.max_request_items, 3, 128, 128), np.uint8)}) == executor.max_request_items
    with pytest.raises(BadRequestError, match=f"at most {executor.max_request_items} items, got {executor.max_request_items + 1}; split it"):
        executor.check_inputs({"camera": np.zeros((executor.max_request_items + 1, 3, 128, 128), np.uint8)})


def test_a_dead_stage_worker_is_restarted_with_its_stages(pipeline):
    import os
    import signal

    from shoal.runtime.errors import ServingError

    path, _ = pipeline
    deployment, base = load_deployment(path)
    images = np.zeros((1, 3, 128, 128), dtype=np.uint8)

    async def run():
        executor = WorkflowExecutor(deployment, base)
        await executor.start()
        try:
            victim = next(iter(deployment.tasks["features"].load_shares_rps))
            os.kill(executor.workers[victim].pid, signal.SIGKILL)
            outcomes = []
            for _ in range(200):  # until the restarted worker serves its share again
                try:
                    await executor.infer({"camera": images})
                    outcomes.append("ok")
                except ServingError as error:
                    outcomes.append(type(error).__name__)
                # Counted once the replacement holds its stages again (it is alive, and in
                # `workers`, while it still loads them: on a slow machine ten answers came first).
                restarted = executor.metrics.registry.get_sample_value("shoal_worker_restarts_total") == 1
                if outcomes[-10:] == ["ok"] * 10 and executor.workers[victim].alive and restarted:
                    break
                await asyncio.sleep(0.05)
            return outcomes, executor.workers[victim].alive, executor.metrics.registry.get_sample_value("shoal_worker_restarts_total")
        finally:
            await executor.stop()

    outcomes, alive, restarts = asyncio.run(run())
    assert alive and restarts == 1
    assert outcomes[-10:] == ["ok"] * 10


def test_a_workflow_served_beside_models_reads_the_server_s_loop_monitor(pipeline, fixture_repository_path, monkeypatch):
    """One event loop, one monitor: the workflow's scheduler reads the readings the service's
    monitor keeps (its send-ahead guard and its predictions), and no second timer runs."""
    from shoal.experiments.server_process import free_port
    from shoal.runtime.server import serve_forever
    from shoal.runtime.worker_manager import ServeConfig

    path, _ = pipeline
    executors = []
    original_start = WorkflowExecutor.start

    async def recording_start(self):
        executors.append(self)
        await original_start(self)

    monkeypatch.setattr(WorkflowExecutor, "start", recording_start)

    async def run():
        stop, http_port = asyncio.Event(), free_port()
        serving = asyncio.create_task(serve_forever(ServeConfig(repository=fixture_repository_path, preload=()), http_port=http_port,
                                                    grpc_port=None, workflow_deployment=path, stop_event=stop))  # fmt: skip
        try:
            async with httpx.AsyncClient() as client:
                for _ in range(600):
                    if serving.done():
                        serving.result()
                    try:
                        if (await client.get(f"http://127.0.0.1:{http_port}/v2/models/fixture-pipeline/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)  # a few readings
            monitors = [task for task in asyncio.all_tasks() if task.get_coro().__qualname__ == "LoopMonitor.run"]
            (executor,) = executors
            shared = executor.scheduler.loop_monitor
            return len(monitors), shared.running, executor._loop_monitor_task
        finally:
            stop.set()
            await serving

    num_monitors, shared_running, own_task = asyncio.run(run())
    assert num_monitors == 1 and shared_running and own_task is None


def test_items_queued_on_a_stage_worker_that_dies_go_to_the_others_even_if_it_cannot_come_back(pipeline, tmp_path):
    """A stage worker killed with items waiting in its queue, whose replacement cannot load its
    stage (the model file is gone): those items are run by the task's other workers, and new
    ones are routed around it. (They used to wait in its queue for ever.)"""
    import os
    import shutil
    import signal

    path, _ = pipeline
    shutil.copytree(path.parent, tmp_path / "pipeline")
    deployment, base = load_deployment(tmp_path / "pipeline" / path.name)
    images = np.random.default_rng(0).integers(0, 255, (256, 3, 128, 128), dtype=np.uint8)

    async def run():
        executor = WorkflowExecutor(deployment, base, max_batch_size=4)  # small batches: the queue drains slowly enough to catch
        await executor.start()
        try:
            victim = next(iter(deployment.tasks["features"].load_shares_rps))
            # Two batches of the first request's items ahead of the second's: the one the victim
            # may send in the moment before its exit is noticed cannot hold any of the second's
            # (it got "worker is not running" in about one full-suite run in three when it did).
            enough_ahead = 2 * executor.max_batch_size + 8
            key = f"features@{victim}"
            first = asyncio.ensure_future(executor.infer({"camera": images}, slo_ms=60_000))
            await asyncio.sleep(0)
            # A later deadline than the first's: its items wait behind them rather than ride in
            # the batch sent ahead to the victim, whose items get errors by contract.
            second = asyncio.ensure_future(executor.infer({"camera": images[:8]}, slo_ms=90_000))
            for _ in range(2000):  # until the victim has a batch running and items waiting
                await asyncio.sleep(0.001)
                if len(executor.scheduler.queues[key]) >= enough_ahead and executor.scheduler._sent.get(victim):
                    break
            queued_at_kill = len(executor.scheduler.queues[key])
            model = deployment.tasks["features"].model.path
            os.rename(base / model, base / (model + ".gone"))
            os.kill(executor.workers[victim].pid, signal.SIGKILL)
            done, _ = await asyncio.wait({second}, timeout=20)
            third = await executor.infer({"camera": images[:4]}, slo_ms=30_000)  # routed around it
            await asyncio.gather(first, return_exceptions=True)
            return queued_at_kill - enough_ahead, bool(done), second.exception() if done else None, third, len(executor.scheduler.queues[key])
        finally:
            await executor.stop()

    queued_beyond_need, done, error, third, left = asyncio.run(run())
    assert queued_beyond_need >= 0 and done and error is None, error
    assert third.outputs["classify"].shape[0] == 4 and left == 0


def test_a_replacement_that_dies_while_starting_is_retried_by_one_restart_and_leaves_no_process(pipeline):
    """Each replacement that died during its start used to begin a restart of its own, beside
    the one retrying it: restarts multiplied and the workers they started outlived `stop()`."""
    import multiprocessing
    import os
    import signal

    from shoal.runtime.backend import WorkerSpec

    path, _ = pipeline
    deployment, base = load_deployment(path)

    async def run():
        executor = WorkflowExecutor(deployment, base)
        await executor.start()
        victim = next(iter(deployment.tasks["features"].load_shares_rps))
        failing_starts = [2]
        make_handle = executor._new_handle

        def new_handle(worker):
            if worker == victim and failing_starts[0] > 0:
                failing_starts[0] -= 1  # a device its process refuses: it dies during its start
                return executor.backend.new_worker(WorkerSpec(worker, "tpu", 1), on_exit=executor._on_worker_exit)
            return make_handle(worker)

        executor._new_handle = new_handle
        most_restarts = 0
        try:
            os.kill(executor.workers[victim].pid, signal.SIGKILL)
            for _ in range(300):
                await asyncio.sleep(0.05)
                most_restarts = max(most_restarts, len(executor._restarts))
                if failing_starts[0] == 0 and not executor._restarts:
                    break
            result = await executor.infer({"camera": np.zeros((2, 3, 128, 128), np.uint8)}, slo_ms=30_000)
        finally:
            await executor.stop()
        await asyncio.sleep(0.5)
        left = [process.name for process in multiprocessing.active_children() if process.name.startswith("shoal-worker")]
        return most_restarts, failing_starts[0], result.outputs["classify"].shape[0], left

    most_restarts, failing_left, answered, left = asyncio.run(run())
    assert failing_left == 0 and answered == 2
    assert most_restarts == 1
    assert left == []


def test_a_workflow_is_not_ready_while_a_task_has_no_serving_worker(pipeline):
    """Readiness said 'started' only: with every worker of a task restarting it said ready while
    every request was a 503."""
    import os
    import signal

    path, _ = pipeline
    deployment, base = load_deployment(path)

    async def run():
        executor = WorkflowExecutor(deployment, base)
        await executor.start()
        try:
            before = executor.ready
            for worker in deployment.tasks["classify"].load_shares_rps:
                os.kill(executor.workers[worker].pid, signal.SIGKILL)
            for _ in range(100):  # until the deaths are noticed
                await asyncio.sleep(0.02)
                if not executor.ready:
                    break
            during = executor.ready
            for _ in range(400):
                await asyncio.sleep(0.05)
                if executor.ready:
                    break
            return before, during, executor.ready
        finally:
            await executor.stop()

    assert asyncio.run(run()) == (True, False, True)


@pytest.mark.parametrize("handed_over", [False, True], ids=["queued", "handed-over"])
def test_a_request_given_up_leaves_no_item_in_the_stage_queues(pipeline, handed_over):
    """A workflow request cancelled (its client went away) while its items wait behind another
    request's on busy workers: they leave the stage queues at once rather than hold places until
    a worker comes back for a batch and skips them; also those moved to another worker's queue
    when theirs died (`_hand_over`)."""
    import os
    import signal

    path, _ = pipeline
    deployment, base = load_deployment(path)
    images = np.zeros((256, 3, 128, 128), dtype=np.uint8)

    def queued(executor) -> list:
        return [item for queue in executor.scheduler.queues.values() for item in queue.items]

    async def run():
        executor = WorkflowExecutor(deployment, base, max_batch_size=4)
        await executor.start()
        pids = [handle.pid for handle in executor.workers.values()]
        try:
            ahead = asyncio.ensure_future(executor.infer({"camera": images}, slo_ms=60_000))
            for _ in range(2000):
                await asyncio.sleep(0.001)
                if len(queued(executor)) >= 64:
                    break
            given_up_after_ms = monotonic_ms() + 70_000  # `given_up`'s items are those due later
            given_up = asyncio.ensure_future(executor.infer({"camera": images[:32]}, slo_ms=90_000))  # queued behind `ahead`
            for _ in range(20):
                await asyncio.sleep(0.001)
            for pid in pids:  # every worker busy with `ahead` for as long as this takes
                os.kill(pid, signal.SIGSTOP)
            if handed_over:
                features = [executor.scheduler.queues[f"features@{worker}"] for worker in deployment.tasks["features"].load_shares_rps]
                victim_queue = max(features, key=lambda queue: sum(item.deadline_ms > given_up_after_ms for item in queue.items))
                os.kill(executor.workers[victim_queue.key.split("@")[1]].pid, signal.SIGKILL)
                for _ in range(2000):  # until its queue was handed over to the others
                    await asyncio.sleep(0.001)
                    if not len(victim_queue):
                        break
            given_up_queued = sum(item.deadline_ms > given_up_after_ms for item in queued(executor))
            given_up.cancel()
            with pytest.raises(asyncio.CancelledError):
                await given_up
            await asyncio.sleep(0.05)  # the stage tasks take their cancellation
            left = queued(executor)
            counts = given_up_queued, sum(item.future.cancelled() for item in left), len(left)
            ahead.cancel()
            return counts
        finally:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            await executor.stop()

    given_up_queued, cancelled_left, left = asyncio.run(run())
    assert given_up_queued > 0 and cancelled_left == 0
    # `ahead`'s items still wait (where a worker was killed, its running batch held some of
    # them, and `ahead` failed as a whole)
    assert left > 0 or handed_over
