"""Triton's system shared-memory extension: the region registry, and a real server read from and
written to by tritonclient over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from multiprocessing import shared_memory

import httpx
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from shoal.runtime.batch_block import BatchBlock
from shoal.runtime.codec import decode_http_request
from shoal.runtime.errors import BadRequestError, ForbiddenError, NotFoundError, PayloadTooLargeError
from shoal.runtime.http_frontend import build_http_app
from shoal.runtime.service import InferenceService
from shoal.runtime.shared_memory import SharedMemoryRef, SystemSharedMemory, check_same_host, shared_memory_ref
from shoal.runtime.worker_manager import ServeConfig


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


def test_an_object_shrunk_after_registration_is_an_error_not_a_crash(shm_object):
    """Mapped, a shrunk object killed the server (SIGBUS) at the next read or write."""
    registry = SystemSharedMemory()
    registry.register("shrinking", shm_object.name, 0, 8192)
    descriptor = os.open(f"/dev/shm/{shm_object.name}", os.O_RDWR)
    try:
        os.ftruncate(descriptor, 1024)
    finally:
        os.close(descriptor)
    with pytest.raises(BadRequestError, match="its object shrank after it was registered"):
        registry.read(SharedMemoryRef("shrinking", byte_size=4096), "input 'x'")
    with pytest.raises(BadRequestError, match="its object shrank after it was registered"):
        registry.write(SharedMemoryRef("shrinking", byte_size=4096, offset=2048), b"x" * 100, "output 'y'")
    assert os.stat(f"/dev/shm/{shm_object.name}").st_size == 1024  # not grown back by the write
    assert registry.read(SharedMemoryRef("shrinking", byte_size=16), "input 'x'") == bytes(16)  # what is left still reads
    registry.close()


def test_the_server_s_own_objects_cannot_be_registered_under_any_name(shm_object):
    registry = SystemSharedMemory(reserved_names=lambda: [shm_object.name])
    with pytest.raises(BadRequestError, match="one of this server's own objects"):
        registry.register("own", shm_object.name, 0, 16)
    link = f"/dev/shm/{shm_object.name}-link"
    os.link(f"/dev/shm/{shm_object.name}", link)
    try:
        with pytest.raises(BadRequestError, match="one of this server's own objects"):
            registry.register("own", os.path.basename(link), 0, 16)
    finally:
        os.unlink(link)
    assert registry.status() == []
    block = BatchBlock.create(4096)
    name = block.name
    assert name in BatchBlock.created_names()
    block.release()
    assert name not in BatchBlock.created_names()


def test_a_live_server_refuses_to_register_its_workers_blocks(server):
    """The blocks the server maps (its workers' batches, /proc/<pid>/maps): written through a
    region, a client's outputs would land in other requests' batches."""
    maps = open(f"/proc/{server.process.pid}/maps").read()
    own = sorted(set(re.findall(r"/dev/shm/(\S+)", maps)))
    assert own, "the server maps its workers' blocks from /dev/shm"
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    for name in own:
        with pytest.raises(InferenceServerException, match="one of this server's own objects"):
            client.register_system_shared_memory("own", "/" + name, 64)
    assert client.get_system_shared_memory_status() == []


def test_an_input_s_claimed_size_is_checked_before_anything_is_read(shm_object):
    registry = SystemSharedMemory(max_read_bytes=8192)
    registry.register("big", shm_object.name, 0, 16384)
    header = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 16, 16],
                          "parameters": {"shared_memory_region": "big", "shared_memory_byte_size": 16384}}]}
    # the claim is refused for the shape (400), never read first (which the 8 KiB limit would refuse, 413)
    with pytest.raises(BadRequestError, match="shared_memory_byte_size is 16384 bytes but shape"):
        decode_http_request(json.dumps(header).encode(), None, registry)
    header["inputs"][0]["shape"] = [1, 4, 32, 32]  # 16 KiB: over the server's body limit
    with pytest.raises(PayloadTooLargeError, match="exceed the server's limit of 8192"):
        decode_http_request(json.dumps(header).encode(), None, registry)
    header["inputs"][0].update(shape=[2, 2], parameters={"shared_memory_region": "big", "shared_memory_byte_size": 16})
    np.ndarray((4,), np.float32, buffer=shm_object.buf)[:] = [1, 2, 3, 4]
    np.testing.assert_array_equal(decode_http_request(json.dumps(header).encode(), None, registry).inputs["images"], [[1, 2], [3, 4]])
    registry.close()


def test_keys_that_cannot_name_an_object_and_registrations_from_elsewhere_are_refused():
    with pytest.raises(BadRequestError, match="not a shared-memory object name"):
        SystemSharedMemory().register("r", "\ud800x", 0, 16)  # a lone surrogate from JSON: was a 500
    for local in (None, "", "127.0.0.1", "127.0.0.2", "::1", "[::1]", "::ffff:127.0.0.1", "localhost"):
        check_same_host(local)
    for remote in ("10.1.2.3", "192.168.0.7", "2001:db8::1", "example.com"):
        with pytest.raises(ForbiddenError, match="from the server's own host"):
            check_same_host(remote)


def test_grpc_raw_contents_belong_to_the_inputs_sent_in_the_request(shm_object):
    """tritonclient sends no raw_input_contents entry for an input in shared memory: the entries
    are the other inputs', in order (they were refused as too few)."""
    np.ndarray((2,), np.float32, buffer=shm_object.buf)[:] = [7.0, 8.0]
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import numpy as np
        from shoal.runtime.grpc_tensors import decode_grpc_inputs, peer_host
        from shoal.runtime.proto import grpc_service_pb2 as pb
        from shoal.runtime.shared_memory import SystemSharedMemory

        registry = SystemSharedMemory()
        registry.register("middle", {shm_object.name!r}, 0, 8)
        request = pb.ModelInferRequest(raw_input_contents=[np.float32([1, 2]).tobytes(), np.float32([5, 6]).tobytes()])
        for name in ("a", "b", "c"):
            request.inputs.add(name=name, datatype="FP32", shape=[2])
        request.inputs[1].parameters["shared_memory_region"].string_param = "middle"
        request.inputs[1].parameters["shared_memory_byte_size"].int64_param = 8
        decoded = decode_grpc_inputs(request, registry)
        print([decoded[name].tolist() for name in ("a", "b", "c")])
        # as grpc 1.85 writes them (brackets escaped), and a form not known, which must not pass for local
        print(peer_host("ipv4:127.0.0.1:5000"), peer_host("ipv6:%5B::1%5D:60500"), peer_host("unix:/tmp/s"), peer_host("vsock:3:5000"))
    """)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    decoded, peers = result.stdout.strip().splitlines()
    assert decoded == "[[1.0, 2.0], [7.0, 8.0], [5.0, 6.0]]"
    assert peers == "127.0.0.1 ::1 None vsock:3:5000"
    with pytest.raises(ForbiddenError):
        check_same_host("vsock:3:5000")


def test_registration_over_http_needs_a_local_client_and_the_token(shm_object, fixture_repository_path):
    service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=()))
    app = build_http_app(service, admin_token="secret")

    async def post(path: str, client_host: str, token: str | None) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://shoal") as client:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            return await client.post(path, json={"key": shm_object.name, "byte_size": 16}, headers=headers)

    register = "/v2/systemsharedmemory/region/r/register"
    assert asyncio.run(post(register, "10.1.2.3", "secret")).status_code == 403
    assert asyncio.run(post(register, "127.0.0.1", None)).status_code == 401
    assert asyncio.run(post(register, "127.0.0.1", "secret")).status_code == 200
    assert [region["name"] for region in service.shared_memory.status()] == ["r"]
    assert asyncio.run(post("/v2/systemsharedmemory/unregister", "10.1.2.3", "secret")).status_code == 403
    assert asyncio.run(post("/v2/systemsharedmemory/unregister", "127.0.0.1", None)).status_code == 401
    assert asyncio.run(post("/v2/systemsharedmemory/unregister", "127.0.0.1", "secret")).status_code == 200
    assert service.shared_memory.status() == []


def test_registration_over_grpc_needs_a_local_peer_and_the_token(shm_object):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import asyncio
        from types import SimpleNamespace
        import grpc
        from shoal.runtime.grpc_frontend import _Servicer
        from shoal.runtime.proto import grpc_service_pb2 as pb
        from shoal.runtime.shared_memory import SystemSharedMemory

        class Context:
            def __init__(self, peer, token=None):
                self._peer, self._metadata = peer, (("authorization", f"Bearer {{token}}"),) if token else ()
            def peer(self): return self._peer
            def invocation_metadata(self): return self._metadata
            def set_trailing_metadata(self, metadata): pass
            async def abort(self, code, details):
                raise grpc.aio.AbortError(code.name)

        async def main():
            registry = SystemSharedMemory()
            servicer = _Servicer(SimpleNamespace(shared_memory=registry), None, admin_token="secret")
            register = pb.SystemSharedMemoryRegisterRequest(name="r", key={shm_object.name!r}, byte_size=16)
            for context in (Context("ipv4:10.1.2.3:5000", "secret"), Context("ipv6:%5B::1%5D:5000"), Context("ipv6:%5B::1%5D:5000", "secret")):
                try:
                    await servicer.SystemSharedMemoryRegister(register, context)
                    print("registered", [region["name"] for region in registry.status()])
                except grpc.aio.AbortError as error:
                    print(error.args[0])
            try:
                await servicer.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="r"), Context("ipv4:10.1.2.3:5000", "secret"))
            except grpc.aio.AbortError as error:
                print(error.args[0])
            registry.close()

        asyncio.run(main())
    """)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["PERMISSION_DENIED", "UNAUTHENTICATED", "registered", "['r']", "PERMISSION_DENIED"]


def test_regions_are_capped(shm_object, monkeypatch):
    monkeypatch.setattr("shoal.runtime.shared_memory.MAX_REGIONS", 2)
    registry = SystemSharedMemory()
    registry.register("a", shm_object.name, 0, 16)
    registry.register("b", shm_object.name, 16, 16)
    with pytest.raises(BadRequestError, match="2 regions are registered already"):
        registry.register("c", shm_object.name, 32, 16)
    registry.close()


def test_grpc_outputs_in_shared_memory_keep_the_others_raw_contents_in_place(shm_object):
    """tritonclient reads raw_output_contents by the outputs' positions: an output written to
    shared memory leaves an empty entry, or the next output's bytes would be read as its."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import asyncio
        from types import SimpleNamespace
        import numpy as np
        from shoal.runtime.endpoints import Answer
        from shoal.runtime.grpc_frontend import _Servicer
        from shoal.runtime.proto import grpc_service_pb2 as pb
        from shoal.runtime.shared_memory import SystemSharedMemory

        class Models:
            def check(self, *args): pass
            def refuse_at_gate(self, *args): return False
            async def infer(self, name, inputs, parameters, requested, received_ms=None, classifications=None):
                return Answer({{"first": np.float32([1, 2]), "second": np.float32([3, 4, 5])}}, {{}})

        registry = SystemSharedMemory()
        registry.register("out", {shm_object.name!r}, 0, 64)
        request = pb.ModelInferRequest(model_name="m", raw_input_contents=[np.float32([0]).tobytes()])
        request.inputs.add(name="x", datatype="FP32", shape=[1])
        first = request.outputs.add(name="first")
        first.parameters["shared_memory_region"].string_param = "out"
        first.parameters["shared_memory_byte_size"].int64_param = 64
        request.outputs.add(name="second")
        response = asyncio.run(_Servicer(SimpleNamespace(shared_memory=registry), Models())._infer(request, 0.0))
        print([len(entry) for entry in response.raw_output_contents], np.frombuffer(response.raw_output_contents[1], np.float32).tolist())
        print(response.outputs[0].parameters["shared_memory_byte_size"].int64_param)
    """)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lengths, written = result.stdout.strip().splitlines()
    assert lengths == "[0, 12] [3.0, 4.0, 5.0]" and written == "8"
    np.testing.assert_array_equal(np.ndarray((2,), np.float32, buffer=shm_object.buf), [1, 2])


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
