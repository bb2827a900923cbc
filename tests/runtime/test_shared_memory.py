"""Triton's system shared-memory extension: the region registry, and a real server read from and
written to by tritonclient over HTTP and gRPC."""

from __future__ import annotations

import subprocess
import sys
import uuid
from multiprocessing import shared_memory

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from shoal.runtime.errors import BadRequestError, NotFoundError
from shoal.runtime.shared_memory import SharedMemoryRef, SystemSharedMemory, shared_memory_ref


@pytest.fixture()
def shm_object():
    """A POSIX shared-memory object of 16 KiB, as a client creates it; removed after the test."""
    created = shared_memory.SharedMemory(name=f"shoal-test-{uuid.uuid4().hex[:12]}", create=True, size=16384)
    yield created
    created.close()
    created.unlink()


def test_a_region_is_a_window_of_the_object_read_and_written_in_place(shm_object):
    registry = SystemSharedMemory()
    registry.register("window", "/" + shm_object.name, offset=1024, byte_size=512)
    shm_object.buf[1024 + 8 : 1024 + 12] = b"abcd"
    assert registry.read(SharedMemoryRef("window", byte_size=4, offset=8), "input 'x'") == b"abcd"
    registry.write(SharedMemoryRef("window", byte_size=16, offset=100), b"0123456789", "output 'y'")
    assert bytes(shm_object.buf[1124:1134]) == b"0123456789"
    assert registry.status() == [{"name": "window", "key": "/" + shm_object.name, "offset": 1024, "byte_size": 512}]
    # the window's own bounds, not the object's: 1024 + 500 + 16 fits the object but not the region
    with pytest.raises(BadRequestError, match="runs past region 'window'"):
        registry.read(SharedMemoryRef("window", byte_size=16, offset=500), "input 'x'")
    with pytest.raises(BadRequestError, match="needs 10 bytes but shared_memory_byte_size is 4"):
        registry.write(SharedMemoryRef("window", byte_size=4), b"0123456789", "output 'y'")
    registry.unregister("window")
    with pytest.raises(BadRequestError, match="'window' is not registered"):
        registry.read(SharedMemoryRef("window", byte_size=4), "input 'x'")


def test_registration_refuses_what_it_cannot_map_and_names_the_fix(shm_object):
    registry = SystemSharedMemory()
    with pytest.raises(NotFoundError, match="create it before registering it"):
        registry.register("r", "/shoal-test-no-such-object", 0, 16)
    with pytest.raises(BadRequestError, match="runs past the end"):
        registry.register("r", shm_object.name, 16300, 200)
    for key in ("../etc/passwd", "/a/b", "", "/"):
        with pytest.raises(BadRequestError, match="not a shared-memory object name"):
            registry.register("r", key, 0, 16)
    with pytest.raises(BadRequestError, match="'byte_size' must be at least 1"):
        registry.register("r", shm_object.name, 0, 0)
    with pytest.raises(BadRequestError, match="'offset' must be a non-negative integer"):
        registry.register("r", shm_object.name, -1, 16)
    registry.register("r", shm_object.name, 0, 16)  # without its leading slash, as Python names it
    with pytest.raises(BadRequestError, match="already registered"):
        registry.register("r", shm_object.name, 0, 16)
    with pytest.raises(NotFoundError):
        registry.status("other")
    registry.unregister("never-registered")  # as Triton: no error
    registry.unregister()
    assert registry.status() == []


def test_tensor_parameters_name_a_region_completely_or_are_refused():
    assert shared_memory_ref({"binary_data_size": 4}, "input 'x'") is None
    assert shared_memory_ref({"shared_memory_region": "r", "shared_memory_byte_size": 8}, "input 'x'") == SharedMemoryRef("r", 8, 0)
    for parameters, message in (
        ({"shared_memory_byte_size": 8}, "'shared_memory_region' must name"),
        ({"shared_memory_region": "r"}, "'shared_memory_byte_size' is needed"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": -1}, "must be a non-negative integer"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": True}, "must be a non-negative integer"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_size": 8}, "unknown parameter 'shared_memory_size'"),
    ):
        with pytest.raises(BadRequestError, match=message):
            shared_memory_ref(parameters, "input 'x'")


def test_the_server_leaves_the_client_s_object_in_place_when_it_exits(shm_object):
    """Python's own shared-memory attach (before 3.13) would hand the object to the resource
    tracker, which deletes it when the attaching process exits: the client's memory."""
    script = (
        "from shoal.runtime.shared_memory import SystemSharedMemory\n"
        f"registry = SystemSharedMemory(); registry.register('r', {shm_object.name!r}, 0, 64); registry.close()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    again = shared_memory.SharedMemory(name=shm_object.name)  # raises FileNotFoundError if it was deleted
    again.close()


def _reference_logits(server, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(server.repository / "fixture" / "rf-16" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_passes_inputs_and_outputs_in_shared_memory(server, shm_object, protocol):
    triton = triton_http if protocol == "http" else triton_grpc
    client = triton.InferenceServerClient(f"127.0.0.1:{server.http_port if protocol == 'http' else server.grpc_port}")
    images = np.random.default_rng(5).random((2, 3, 16, 16), dtype=np.float32)
    expected = _reference_logits(server, images)
    # one object, two regions: the input at its start, the output 8 KiB in
    np.ndarray(images.shape, np.float32, buffer=shm_object.buf)[:] = images
    input_region, output_region = f"in-{protocol}", f"out-{protocol}"
    client.register_system_shared_memory(input_region, "/" + shm_object.name, images.nbytes)
    client.register_system_shared_memory(output_region, "/" + shm_object.name, 2048, offset=8192)
    try:
        tensor = triton.InferInput("images", list(images.shape), "FP32")
        tensor.set_shared_memory(input_region, images.nbytes)
        requested = triton.InferRequestedOutput("logits")
        requested.set_shared_memory(output_region, 2048)
        result = client.infer("fixture.rf-16", [tensor], outputs=[requested], parameters={"slo_ms": 5000})
        output = result.get_output("logits")
        shape = [int(dim) for dim in (output["shape"] if protocol == "http" else output.shape)]
        assert shape == list(expected.shape)
        logits = np.ndarray(shape, np.float32, buffer=shm_object.buf, offset=8192)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
        parameters = output["parameters"] if protocol == "http" else {key: value.WhichOneof("parameter_choice") and getattr(value, value.WhichOneof("parameter_choice")) for key, value in output.parameters.items()}
        assert parameters["shared_memory_region"] == output_region and parameters["shared_memory_byte_size"] == expected.nbytes
        status = client.get_system_shared_memory_status(as_json=True) if protocol == "grpc" else client.get_system_shared_memory_status()
        names = set(status["regions"]) if protocol == "grpc" else {region["name"] for region in status}
        assert {input_region, output_region} <= names
    finally:
        client.unregister_system_shared_memory(input_region)
        client.unregister_system_shared_memory(output_region)
    status = client.get_system_shared_memory_status(as_json=True) if protocol == "grpc" else client.get_system_shared_memory_status()
    assert not (set(status.get("regions", {})) if protocol == "grpc" else {region["name"] for region in status}) & {input_region, output_region}


def test_bad_shared_memory_requests_are_client_errors_and_the_server_stays_ready(server, shm_object):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    nbytes = 3 * 16 * 16 * 4
    images = triton_http.InferInput("images", [1, 3, 16, 16], "FP32")
    images.set_shared_memory("never-registered", nbytes)
    with pytest.raises(InferenceServerException, match="'never-registered' is not registered"):
        client.infer("fixture.rf-16", [images])
    with pytest.raises(InferenceServerException, match="create it before registering it"):
        client.register_system_shared_memory("missing-object", "/shoal-test-no-such-object", 64)
    client.register_system_shared_memory("small", "/" + shm_object.name, 4096)
    try:
        with pytest.raises(InferenceServerException, match="already registered"):
            client.register_system_shared_memory("small", "/" + shm_object.name, 4096)
        wrong_size = triton_http.InferInput("images", [1, 3, 16, 16], "FP32")
        wrong_size.set_shared_memory("small", 1024)
        with pytest.raises(InferenceServerException, match="shared_memory_byte_size is 1024 bytes but shape"):
            client.infer("fixture.rf-16", [wrong_size])
        inside = triton_http.InferInput("images", [1, 3, 16, 16], "FP32")
        inside.set_shared_memory("small", nbytes)
        too_small = triton_http.InferRequestedOutput("logits")
        too_small.set_shared_memory("small", 4, offset=nbytes)
        with pytest.raises(InferenceServerException, match="shared_memory_byte_size is 4; ask for a window that holds it"):
            client.infer("fixture.rf-16", [inside], outputs=[too_small])
        assert client.is_server_ready()
        assert "system_shared_memory" in client.get_server_metadata()["extensions"]
    finally:
        client.unregister_system_shared_memory("small")
