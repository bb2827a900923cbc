"""The Ray backend on a local Ray instance: same answers as ONNX Runtime, actor crashes lose nothing."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from shoal.core.models import Device
from shoal.profiler.session import create_session
from shoal.zoo.repository import ModelRepository

from .conftest import start_server, stop_server

def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return 0


def _ray_worker_pids(root_pid: int) -> list[int]:
    """shoal's Ray actors started under `root_pid` (the server), not any other Ray on the machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"ray::RayWorker" not in (entry / "cmdline").read_bytes():
                    continue
            except OSError:
                continue
            pid = int(entry.name)
            while pid > 1 and pid != root_pid:
                pid = _parent(pid)
            if pid == root_pid:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def ray_server(fixture_repository_path):
    server = start_server(fixture_repository_path, "--backend", "ray", "--workers", "2", "--threads", "1", timeout_s=180)
    yield server
    stop_server(server)


def test_answers_equal_onnx_runtime_called_directly(ray_server, fixture_repository_path):
    images = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(images.shape), "data": images.ravel().tolist()}], "parameters": {"slo_ms": 10000}}
    answer = httpx.post(f"{ray_server.url}/v2/models/fixture.rf-64/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(answer.json()["outputs"][0]["shape"])
    session = create_session(ModelRepository(fixture_repository_path).model_path("fixture", "rf-64"), Device.parse("cpu"), intra_op_threads=1)
    (expected,) = session.run(None, {"images": images})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_killed_actor_is_replaced_and_no_request_is_lost(ray_server):
    before = _ray_worker_pids(ray_server.process.pid)
    assert len(before) == 2  # one actor per worker
    body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [0.0] * (3 * 64 * 64)}], "parameters": {"slo_ms": 10000}}
    outcomes: list = []
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    outcomes.append(http.post(f"{ray_server.url}/v2/models/fixture.rf-64/infer", json=body).status_code)
                except httpx.HTTPError as error:
                    outcomes.append(f"transport: {error}")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        time.sleep(1.0)
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(_ray_worker_pids(ray_server.process.pid)) < 2 or before[0] in _ray_worker_pids(ray_server.process.pid)):
            time.sleep(0.3)
        time.sleep(2.0)
        stop.set()
        for future in futures:
            future.result(timeout=120)
    assert outcomes and all(isinstance(status, int) for status in outcomes), [o for o in outcomes if not isinstance(o, int)][:3]
    assert set(outcomes) <= {200, 429, 500, 503}
    after = _ray_worker_pids(ray_server.process.pid)
    assert len(after) == 2 and before[0] not in after  # replaced
    final = httpx.post(f"{ray_server.url}/v2/models/fixture.rf-64/infer", json=body, timeout=60)
    assert final.status_code == 200
    assert "shoal_worker_restarts_total 1.0" in httpx.get(f"{ray_server.url}/metrics").text


def test_a_workflow_runs_its_stages_as_ray_actors(fixture_repository_path, tmp_path):
    import asyncio

    from shoal.runtime.workflow import WorkflowExecutor, load_deployment, save_deployment
    from shoal.runtime.workflow.deploy import PipelineWorker, build_classifier_pipeline

    stated = {(task, variant): (10.0 if task == "features" else 2.0) for task in ("features", "classify") for variant in ("rf-16", "rf-32", "rf-64")}
    deployment, _, plan = build_classifier_pipeline(
        ModelRepository(fixture_repository_path), "fixture", tmp_path, workers=[PipelineWorker(f"w{i}", 1.0) for i in range(3)],
        rate_rps=150.0, accuracy_target=0.0, slo_ms=60_000.0, latency_ms=stated,
    )
    save_deployment(deployment, tmp_path / "deployment.json")
    deployment, base = load_deployment(tmp_path / "deployment.json")
    images = np.random.default_rng(5).integers(0, 256, size=(1, 3, 128, 128), dtype=np.uint8)

    import ray

    from ray.util.placement_group import placement_group_table

    async def run():
        executor = WorkflowExecutor(deployment, base, backend="ray")
        await executor.start()
        group = executor.backend.placement_group
        try:
            # the plan's workers were reserved together, one CPU bundle each, and each actor sits in its bundle
            table = placement_group_table(group)
            assert table["state"] == "CREATED" and len(table["bundles"]) == len(deployment.workers)
            bundle_cpus = [f"CPU_group_{index}_{group.id.hex()}" for index in range(len(deployment.workers))]
            assert all(name in ray.cluster_resources() for name in bundle_cpus)
            assert all(ray.available_resources().get(name, 0.0) == 0.0 for name in bundle_cpus)  # taken by the actors
            answers = [await executor.infer({"camera": images}) for _ in range(30)]
        finally:
            await executor.stop()
        return answers, executor.traffic_report(), placement_group_table(group)["state"]

    try:
        answers, traffic, state_after_stop = asyncio.run(run())
        assert state_after_stop == "REMOVED"  # stopping gives the reservation back
        assert all(answer.outputs["classify"].shape == (1, 10) for answer in answers)
        shares = traffic["features"]
        assert sum(row["items"] for row in shares.values()) == 30 and len(shares) == 2  # split 100/50 over two actors
        assert all(abs(row["measured_share"] - row["planned_share"]) <= 1 / 30 + 1e-9 for row in shares.values())
    finally:
        ray.shutdown()


def test_the_capacity_loop_actuator_scales_ray_actors(ray_server):
    import asyncio

    from shoal.planner.capacity_control import ServerBinding
    from shoal.runtime.capacity_actuators import ReplicaChange, RuntimeReplicaActuator

    async def scale():
        actuator = RuntimeReplicaActuator(ray_server.url)
        binding = ServerBinding(server="rf16", variant="fixture.rf-16")
        first = await actuator.apply([ReplicaChange("rf16", "fixture.rf-16", 1)])
        one = await actuator.current_replicas([binding])
        second = await actuator.apply([ReplicaChange("rf16", "fixture.rf-16", 5)])  # more than the 2 actors
        two = await actuator.current_replicas([binding])
        return first, one, second, two

    first, one, second, two = asyncio.run(scale())
    assert first[0].status == "applied" and one == {"rf16": 1}
    assert second[0].status == "capped" and second[0].reached == 2 and two == {"rf16": 2}


def test_the_capacity_loop_runs_a_full_cycle_on_ray_actors(ray_server, tmp_path):
    """collect (the Ray server's metrics) -> optimize -> actuate (actors holding the variant)."""
    from shoal.runtime.capacity_actuators import RuntimeReplicaActuator
    from shoal.runtime.capacity_loop import CapacityLoop, build_app, load_control_file

    from .test_capacity_loop import control_document, send_load, serving, set_replicas, write_control_file  # noqa: TID252

    set_replicas(ray_server.url, {"fixture.rf-16": 1, "fixture.rf-32": 1, "fixture.rf-64": 1})
    spec = load_control_file(write_control_file(tmp_path, control_document(scale_down_delay_s=600)))
    loop = CapacityLoop(spec=spec, runtime_url=ray_server.url, actuator=RuntimeReplicaActuator(ray_server.url),
                        min_window_s=0.2)
    with serving(build_app(loop)) as client:
        send_load(ray_server.url, "fixture.rf-32")
        report = client.get("/invoke").json()
        assert report["ok"], report
        assert report["collected"]["fixture.rf-32"]["arrival_rate_rps"] > 0
        assert report["collected"]["fixture.rf-64"]["arrival_rate_rps"] == 0
        wanted = report["optimized"]["servers"]["rf32"]["numReplicas"]
        assert wanted >= 2
        assert [(a["server"], a["reached"]) for a in report["applied"]] == [("rf32", 2)]  # the 2 actors
    counts = httpx.get(f"{ray_server.url}/v2/repository/replicas").json()
    assert counts["fixture.rf-32"] == 2 and counts["fixture.rf-64"] == 1


def test_workers_the_cluster_cannot_host_are_refused_as_a_whole():
    import asyncio

    import ray
    from ray.util.placement_group import placement_group_table

    from shoal.core.errors import DeviceUnavailableError
    from shoal.runtime.ray_backend import ensure_ray, reserve_placement_group, worker_resources

    assert worker_resources("cuda:0", 2, "a100") == {"CPU": 2.0, "GPU": 1.0, "a100": 1.0}
    assert not ray.is_initialized()

    def shoals_handler(signum, frame):  # stands for the CLI's (stop the workers, exit 143)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, shoals_handler)
    try:
        ensure_ray(None, local_cpus=2)
        # Ray's own handler exited at once, skipping shoal's shutdown.
        assert signal.getsignal(signal.SIGTERM) is shoals_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        # one bundle fits, the second asks for a device type no node has: nothing may stay reserved
        bundles = [worker_resources("cpu", 1), worker_resources("cpu", 1, "tpu-v9")]
        with pytest.raises(DeviceUnavailableError, match="cannot place 2 workers"):
            asyncio.run(reserve_placement_group(bundles, timeout_s=2.0))
        tables = placement_group_table().values()
        assert tables and all(table["state"] == "REMOVED" for table in tables)  # the attempt was withdrawn
        with pytest.raises(ValueError, match="placement strategy"):
            asyncio.run(reserve_placement_group(bundles, strategy="ANYWHERE"))
    finally:
        ray.shutdown()


def test_an_actor_on_this_node_takes_batches_through_its_channel(fixture_repository_path):
    import asyncio

    import ray

    from shoal.runtime.errors import WorkerFailedError
    from shoal.runtime.ray_backend import RayWorkerHandle, ensure_ray

    repository = ModelRepository(fixture_repository_path)
    path = repository.model_path("fixture", "rf-64")
    items = list(np.random.default_rng(7).random((5, 3, 64, 64), dtype=np.float32))
    expected = create_session(path, Device.parse("cpu"), intra_op_threads=1).run(None, {"images": np.stack(items)})[0]
    exits = []

    async def run(shared_memory_bytes: int):
        handle = RayWorkerHandle("w0", shared_memory_bytes=shared_memory_bytes, on_exit=exits.append)
        await handle.start()
        block_file = Path("/dev/shm") / handle.channel.block.name.lstrip("/") if handle.channel else None
        try:
            await handle.load("rf-64", str(path), "images", "logits", (3, 64, 64))
            outputs, compute_ms = await handle.run("rf-64", items)
            present_while_alive = block_file.exists() if block_file else None
            os.kill(handle.pid, signal.SIGKILL)  # the actor dies; whatever it held must fail, not hang
            with pytest.raises(WorkerFailedError):
                for _ in range(50):  # until the death is noticed (at once through the channel)
                    await asyncio.wait_for(handle.run("rf-64", items), 10)
                    await asyncio.sleep(0.1)
            return outputs, compute_ms, present_while_alive, block_file, handle.alive
        finally:
            await handle.stop()

    ensure_ray(None, local_cpus=2)
    try:
        socket_directories = set(Path(tempfile.gettempdir()).glob("shoal-channel-*"))
        shared, compute_ms, present_while_alive, block_file, alive_after = asyncio.run(run(1 << 20))
        assert block_file is not None and present_while_alive  # the same-node actor used the channel's block ...
        assert not block_file.exists() and not alive_after  # ... which was removed when the actor died
        assert len(exits) == 1  # and the owner was told once, to replace it
        np.testing.assert_allclose(shared, expected, rtol=1e-5, atol=1e-5)
        assert compute_ms > 0
        assert set(Path(tempfile.gettempdir()).glob("shoal-channel-*")) == socket_directories  # the killed actor left none
        import multiprocessing.connection

        def unreachable(*args, **kwargs):
            raise ConnectionRefusedError("a container with its own /tmp")

        real_client = multiprocessing.connection.Client
        multiprocessing.connection.Client = unreachable  # the actor's socket cannot be reached from here
        try:
            by_actor_call, _, _, no_block, _ = asyncio.run(run(1 << 20))
        finally:
            multiprocessing.connection.Client = real_client
            for directory in set(Path(tempfile.gettempdir()).glob("shoal-channel-*")) - socket_directories:
                shutil.rmtree(directory, ignore_errors=True)  # the unused socket of the actor we could not reach
        assert no_block is None and len(exits) == 2  # fell back to actor calls (tensors in the object store) ...
        np.testing.assert_allclose(by_actor_call, expected, rtol=1e-5, atol=1e-5)  # ... with the same answers
    finally:
        ray.shutdown()


@pytest.mark.parametrize("through", ["channel", "actor calls"])
def test_an_actor_runs_batches_while_it_loads_another_variant(fixture_repository_path, through):
    import asyncio
    import multiprocessing.connection

    import ray

    from shoal.runtime.ray_backend import RayWorkerHandle, ensure_ray

    repository = ModelRepository(fixture_repository_path)
    small, large = repository.model_path("fixture", "rf-16"), repository.model_path("fixture", "rf-64")
    item = np.ones((3, 16, 16), np.float32)

    async def scenario():
        handle = RayWorkerHandle("w-beside", shared_memory_bytes=1 << 20)
        await handle.start()
        try:
            assert (handle.channel is not None) == (through == "channel")
            await handle.load("rf-16", str(small), "images", "logits", (3, 16, 16), warmup=1)
            load = asyncio.create_task(handle.load("rf-64", str(large), "images", "logits", (3, 64, 64),
                                                   profile_batch_sizes=[1, 8, 16], profile_repeats=40))  # fmt: skip
            await asyncio.sleep(0)
            during_load = 0
            while not load.done():
                await handle.run("rf-16", [item])
                during_load += not load.done()
            await load
            return during_load, sorted(handle.loaded_variants)
        finally:
            await handle.stop()

    def unreachable(*args, **kwargs):
        raise ConnectionRefusedError("a container with its own /tmp")

    real_client = multiprocessing.connection.Client
    if through == "actor calls":
        multiprocessing.connection.Client = unreachable
    ensure_ray(None, local_cpus=2)
    try:
        during_load, loaded = asyncio.run(scenario())
    finally:
        multiprocessing.connection.Client = real_client
        ray.shutdown()
    assert during_load >= 3 and loaded == ["rf-16", "rf-64"]


def test_a_start_that_is_cancelled_kills_its_actor(monkeypatch):
    """No Ray cluster: a fake actor that never gets ready. Cancelled while it waits (a stopping
    server), the start kills the actor, which would otherwise keep its placement-group slot."""
    import asyncio

    import ray

    from shoal.runtime import ray_backend

    killed = []

    class NeverReady:
        class ready:  # noqa: N801 - Ray's method handle
            @staticmethod
            def remote():
                return asyncio.get_running_loop().create_future()  # never resolved

    class FakeClass:
        def options(self, **_):
            return self

        def remote(self, *_):
            return NeverReady()

    monkeypatch.setattr(ray_backend, "_actor_class", lambda: FakeClass())
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "kill", lambda actor: killed.append(actor))

    async def scenario():
        handle = ray_backend.RayWorkerHandle("w0")
        start = asyncio.create_task(handle.start(timeout_s=60))
        await asyncio.sleep(0.05)
        start.cancel()
        try:
            await start
        except asyncio.CancelledError:
            pass
        return handle

    handle = asyncio.run(scenario())
    assert len(killed) == 1 and not handle.alive


def test_a_cluster_address_nothing_answers_fails_at_once_with_its_name():
    """Ray retried a GCS that was not there for minutes, deaf to SIGTERM meanwhile."""
    from shoal.core.errors import DeviceUnavailableError, InvalidInputError
    from shoal.experiments.server_process import free_port
    from shoal.runtime.ray_backend import ensure_ray

    port = free_port()  # nothing listens on it
    started = time.monotonic()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(DeviceUnavailableError, match=f"--address {address}: cannot reach the Ray cluster"):
            ensure_ray(address)
    assert time.monotonic() - started < 20.0
    with pytest.raises(InvalidInputError, match="give auto, local, host:port or ray://host:port"):
        ensure_ray("somewhere")
    # An IPv6 host is written in brackets; "local" is Ray's word for a new instance.
    with pytest.raises(DeviceUnavailableError, match=r"--address \[::1\]:\d+: cannot reach the Ray cluster"):
        ensure_ray(f"[::1]:{port}")
