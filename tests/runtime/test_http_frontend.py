"""The KServe v2 HTTP frontend against a real server process, with tritonclient and raw HTTP."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException


def reference_logits(repository, variant, images):
    session = onnxruntime.InferenceSession(str(repository / "fixture" / variant / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_gets_the_same_numbers_as_onnxruntime(server, binary):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    images = np.random.default_rng(3).random((3, 3, 32, 32), dtype=np.float32)
    tensor = triton_http.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    result = client.infer("fixture.rf-32", [tensor], outputs=[triton_http.InferRequestedOutput("logits", binary_data=binary)])
    np.testing.assert_allclose(result.as_numpy("logits"), reference_logits(server.repository, "rf-32", images), rtol=1e-5, atol=1e-5)
    assert result.get_response()["parameters"]["shoal_variant"] == "fixture.rf-32"


def test_family_request_names_the_variant_that_served(server):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    frame = np.random.default_rng(4).integers(0, 255, (1, 3, 128, 128), dtype=np.uint8)
    tensor = triton_http.InferInput("images", list(frame.shape), "UINT8")
    tensor.set_data_from_numpy(frame)
    result = client.infer("fixture", [tensor], parameters={"slo_ms": 500})
    variant = result.get_response()["parameters"]["shoal_variant"]
    assert variant.startswith("fixture.rf-")
    # The server resized the full frame exactly as the profiler does; compare with ORT on that input.
    from shoal.zoo.preprocess import resize_images

    size = int(variant.rsplit("-", 1)[1])
    expected = reference_logits(server.repository, variant.split(".", 1)[1], resize_images(frame.astype(np.float32) / 255.0, size))
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)


def test_health_metadata_and_repository_index(server):
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2").json()["name"] == "shoal"
    metadata = httpx.get(f"{server.url}/v2/models/fixture.rf-16").json()
    assert metadata["inputs"][0]["shape"] == [-1, 3, 16, 16]
    assert httpx.get(f"{server.url}/v2/models/fixture.rf-16/versions/1/ready").status_code == 200
    index = httpx.post(f"{server.url}/v2/repository/index").json()
    assert {entry["name"] for entry in index} == {"fixture", "fixture.rf-16", "fixture.rf-32", "fixture.rf-64"}
    assert all(entry["state"] == "READY" for entry in index)


def infer_raw(server, model, body, headers=None):
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers or {}, timeout=10)


@pytest.mark.parametrize(
    ("model", "body", "headers", "status", "message"),
    [
        ("fixture.rf-16", b"{not json", None, 400, "not valid JSON"),
        # NaN is no JSON token (Python's json writes it; the decoder refuses it)
        ("fixture.rf-16", b'{"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [NaN]}]}', None, 400, "not valid JSON"),
        # an integer past 64 bits reads as a float, which the shape check names
        ("fixture.rf-16", b'{"inputs": [{"name": "images", "shape": [100000000000000000000000000000, 3], "datatype": "FP32", "data": []}]}', None, 400, "'shape' must be a list of non-negative integers"),
        ("fixture.rf-16", json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16], "datatype": "FP32", "data": [0.0] * 48}]}), None, 400, "must have shape [batch, 3, S, S]"),
        ("fixture.rf-16", json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "INT64", "data": [0] * 768}]}), None, 400, "must be FP32"),
        ("fixture.rf-16", json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 5}]}), None, 400, "has 5 values but shape"),
        ("fixture.rf-16", json.dumps({"inputs": [{"name": "pixels", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}), None, 400, "exactly one input named 'images'"),
        ("fixture.rf-16", json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}], "parameters": {"timeout": -5}}), None, 400, "'timeout' must be a positive number"),
        ("nope", json.dumps({"inputs": []}), None, 404, "model 'nope' is not served"),
        # a digit str.isdigit takes and int() does not (a 500 before)
        ("fixture.rf-16", json.dumps({"inputs": []}), {"Inference-Header-Content-Length": "\u00b2".encode("latin-1")}, 400, "must be a non-negative integer"),
        ("fixture.rf-16", b"x" * (1024 * 1024 + 10), None, 413, "exceeds the limit"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(server, model, body, headers, status, message):
    response = infer_raw(server, model, body, headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_binary_length_mismatch_is_a_400(server):
    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "parameters": {"binary_data_size": 3072}}]}).encode()
    short = header + b"\0" * 100
    response = infer_raw(server, "fixture.rf-16", short, {"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "runs past the end" in response.json()["error"]
    response = infer_raw(server, "fixture.rf-16", header, {"Inference-Header-Content-Length": str(len(header) + 50)})
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]


def test_inference_paths_answer_alike_with_and_without_a_version_and_refuse_other_methods(server):
    images = np.random.default_rng(2).random((1, 3, 16, 16), dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": images.ravel().tolist()}]})
    plain = httpx.post(f"{server.url}/v2/models/fixture.rf-16/infer", content=body)
    versioned = httpx.post(f"{server.url}/v2/models/fixture.rf-16/versions/1/infer", content=body)
    assert plain.status_code == versioned.status_code == 200
    assert plain.json()["outputs"][0]["data"] == versioned.json()["outputs"][0]["data"]
    assert httpx.post(f"{server.url}/v2/models/nope/versions/1/infer", content=body).status_code == 404
    assert httpx.get(f"{server.url}/v2/models/fixture.rf-16/infer").status_code == 405
    assert httpx.post(f"{server.url}/v2/models/fixture.rf-16/infer/extra", content=body).status_code == 404


def test_server_stays_healthy_after_bad_input(server):
    for _ in range(5):
        infer_raw(server, "fixture.rf-16", b"\xff\xfe garbage")
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    images = np.zeros((1, 3, 16, 16), np.float32)
    body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": images.ravel().tolist()}]})
    assert infer_raw(server, "fixture.rf-16", body).status_code == 200


def test_every_concurrent_request_gets_exactly_one_answer_and_metrics_count_them(server):
    client_images = np.random.default_rng(5).random((1, 3, 64, 64), dtype=np.float32)
    body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": client_images.ravel().tolist()}], "parameters": {"slo_ms": 2000}})

    def send(_):
        return infer_raw(server, "fixture.rf-64", body).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, range(200)))
    assert len(statuses) == 200
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 100
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'shoal_requests_total{model="fixture.rf-64",outcome="success",variant="fixture.rf-64"}' in metrics
    assert "shoal_batch_size_bucket" in metrics and "shoal_pending_requests" in metrics
    # The start-up heap was frozen out of the collector's sight (full collections stay short).
    frozen = next(line for line in metrics.splitlines() if line.startswith("shoal_gc_frozen_objects "))
    assert float(frozen.split()[1]) > 10_000
    assert 'python_gc_collections_total{generation="2"}' in metrics


def test_unknown_model_via_tritonclient_raises(server):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = triton_http.InferInput("images", [1, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match="not served"):
        client.infer("missing", [tensor])


def test_management_endpoints_unload_and_load_a_variant(fixture_repository_path):
    from .conftest import start_server, stop_server  # noqa: TID252

    server = start_server(fixture_repository_path, "--admin-token", "s3cret", "--preload", "fixture.rf-16", "--idle-unload-s", "1000")
    try:
        url = server.url
        assert httpx.get(f"{url}/v2/models/fixture.rf-32/ready").status_code == 503
        assert httpx.post(f"{url}/v2/repository/models/fixture.rf-32/load").status_code == 401
        assert httpx.post(f"{url}/v2/repository/models/fixture.rf-32/load", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{url}/v2/repository/models/fixture.rf-32/load", headers={"Authorization": "Bearer s3cret"}, timeout=30).status_code == 200
        assert httpx.get(f"{url}/v2/models/fixture.rf-32/ready").status_code == 200
        body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}]})
        assert infer_raw(server, "fixture.rf-32", body).status_code == 200
        assert httpx.post(f"{url}/v2/repository/models/fixture.rf-32/unload", headers={"Authorization": "Bearer s3cret"}, timeout=30).status_code == 200
        response = infer_raw(server, "fixture.rf-32", body)
        assert response.status_code == 503 and "is not loaded" in response.json()["error"]
    finally:
        stop_server(server)


def test_controller_preloads_the_neighbours_of_a_used_variant(fixture_repository_path):
    from .conftest import start_server, stop_server  # noqa: TID252

    server = start_server(fixture_repository_path, "--preload", "fixture.rf-16", "--control-interval-s", "0.2")
    try:
        assert httpx.get(f"{server.url}/v2/models/fixture.rf-32/ready").status_code == 503
        body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]})
        assert infer_raw(server, "fixture.rf-16", body).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and httpx.get(f"{server.url}/v2/models/fixture.rf-32/ready").status_code != 200:
            time.sleep(0.2)
        assert httpx.get(f"{server.url}/v2/models/fixture.rf-32/ready").status_code == 200
        assert 'shoal_controller_decisions_total{action="load",variant="fixture.rf-32"} 1.0' in httpx.get(f"{server.url}/metrics").text
    finally:
        stop_server(server)


def test_replicas_follow_the_requested_count(fixture_repository_path):
    from .conftest import start_server, stop_server  # noqa: TID252

    server = start_server(fixture_repository_path, "--workers", "2", "--threads", "1", "--preload", "fixture.rf-16", "--idle-unload-s", "1000")
    try:
        url = server.url
        assert httpx.get(f"{url}/v2/repository/replicas").json()["fixture.rf-16"] == 2
        response = httpx.post(f"{url}/v2/repository/models/fixture.rf-16/replicas", json={"replicas": 1}, timeout=30)
        assert response.json() == {"model": "fixture.rf-16", "replicas": 1}
        assert httpx.post(f"{url}/v2/repository/models/fixture.rf-32/replicas", json={"replicas": 5}, timeout=30).json()["replicas"] == 2
        counts = httpx.get(f"{url}/v2/repository/replicas").json()
        assert (counts["fixture.rf-16"], counts["fixture.rf-32"], counts["fixture.rf-64"]) == (1, 2, 0)
        bad = httpx.post(f"{url}/v2/repository/models/fixture/replicas", json={"replicas": 1})
        assert bad.status_code == 400 and "replicas are set per variant" in bad.json()["error"]
        assert httpx.post(f"{url}/v2/repository/models/fixture.rf-16/replicas", json={"replicas": -1}).status_code == 400
        deep = httpx.post(f"{url}/v2/repository/models/fixture.rf-16/replicas", content=b"[" * 5000)  # a 500 (RecursionError) before
        assert deep.status_code == 400 and "must be JSON like" in deep.json()["error"]
    finally:
        stop_server(server)


def test_the_fast_path_takes_exactly_the_inference_posts():
    import asyncio

    from starlette.responses import PlainTextResponse

    from shoal.runtime.http_frontend import InferFastPath

    seen: list[tuple[str, dict]] = []

    async def endpoint(request):
        seen.append(("fast", dict(request.path_params)))
        return PlainTextResponse("fast")

    async def starlette_app(scope, receive, send):
        seen.append(("starlette", {}))
        await PlainTextResponse("slow")(scope, receive, send)

    async def call(method: str, path: str) -> None:
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"", "headers": [], "root_path": ""}
        await InferFastPath(endpoint, starlette_app)(scope, receive, send)

    cases = [
        ("POST", "/v2/models/demo.tiny-16/infer", ("fast", {"model": "demo.tiny-16"})),
        ("POST", "/v2/models/demo/versions/3/infer", ("fast", {"model": "demo", "version": "3"})),
        ("GET", "/v2/models/demo/infer", ("starlette", {})),
        ("HEAD", "/v2/models/demo/infer", ("starlette", {})),
        ("POST", "/v2/models/demo/infer/extra", ("starlette", {})),
        ("POST", "/v2/models/a/b/infer", ("starlette", {})),
        ("POST", "/v2/repository/models/demo/load", ("starlette", {})),
    ]
    for method, path, expected in cases:
        seen.clear()
        asyncio.run(call(method, path))
        assert seen == [expected], (method, path)


def test_a_version_other_than_1_is_a_404_on_every_model_route(server):
    base = f"{server.url}/v2/models/fixture.rf-16"
    for path in ("/versions/1", "/versions/1/ready", "/versions/1/config", "/versions/1/stats"):
        assert httpx.get(base + path).status_code == 200, path
    for path in ("/versions/2", "/versions/2/ready", "/versions/2/config", "/versions/2/stats"):
        answer = httpx.get(base + path)
        assert answer.status_code == 404 and "no version '2'" in answer.json()["error"], path
    body = {"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}
    assert httpx.post(base + "/versions/1/infer", json=body).status_code == 200
    wrong = httpx.post(base + "/versions/7/infer", json=body)
    assert wrong.status_code == 404 and "no version '7'" in wrong.json()["error"]
    unknown = httpx.get(f"{server.url}/v2/models/missing/versions/2")
    assert unknown.status_code == 404 and "missing" in unknown.json()["error"] and "no version" not in unknown.json()["error"]


def test_a_client_that_leaves_mid_upload_is_no_server_error(fixture_repository_path):
    """A client gone while its body is read gets nothing back, and the server logs no error (a
    traceback per hang-up let anyone fill the log)."""
    import socket

    from .conftest import start_server, stop_server  # noqa: TID252

    server = start_server(fixture_repository_path, "--preload", "fixture.rf-16")
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.http_port)) as connection:
                connection.sendall(b"POST /v2/models/fixture.rf-16/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"{" * 1000)
                time.sleep(0.1)
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    finally:
        log = stop_server(server)
    assert "unexpected error" not in log and "Traceback" not in log, log


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_from_tritonclient_get_the_same_numbers(server, algorithm):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    images = np.random.default_rng(5).random((2, 3, 32, 32), dtype=np.float32)
    tensor = triton_http.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer("fixture.rf-32", [tensor], request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("logits"), reference_logits(server.repository, "rf-32", images), rtol=1e-5, atol=1e-5)


def test_bodies_in_other_encodings_or_that_inflate_past_the_limit_are_refused(server):
    import gzip

    body = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]}).encode()
    response = infer_raw(server, "fixture.rf-16", body, {"Content-Encoding": "br"})
    assert response.status_code == 415 and "gzip or deflate" in response.json()["error"]
    bomb = gzip.compress(b" " * (2 * 1024 * 1024))  # the server's limit is 1 MiB; this is ~2 KB sent
    response = infer_raw(server, "fixture.rf-16", bomb, {"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "once decompressed" in response.json()["error"]
    response = infer_raw(server, "fixture.rf-16", gzip.compress(body)[:-12], {"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "gzip" in response.json()["error"]
    assert infer_raw(server, "fixture.rf-16", gzip.compress(body), {"Content-Encoding": "gzip"}).status_code == 200


def test_metrics_count_the_inputs_of_admitted_requests(server):
    """The capacity loop turns request rates into input rates with this counter: a request of
    three images counts three."""

    def admitted_inputs() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        line = next((line for line in text.splitlines() if line.startswith('shoal_request_inputs_total{variant="fixture.rf-16"}')), None)
        return float(line.split()[1]) if line else 0.0

    before = admitted_inputs()
    images = np.zeros((3, 3, 16, 16), np.float32)
    body = json.dumps({"inputs": [{"name": "images", "shape": [3, 3, 16, 16], "datatype": "FP32", "data": images.ravel().tolist()}]})
    assert infer_raw(server, "fixture.rf-16", body).status_code == 200
    assert admitted_inputs() - before == 3.0
