"""The gRPC frontend against a real server process, with tritonclient.grpc."""

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException


@pytest.fixture()
def client(server):
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fixture.rf-16")
    metadata = client.get_model_metadata("fixture.rf-64", as_json=True)
    assert metadata["inputs"][0]["name"] == "images" and metadata["inputs"][0]["shape"] == ["-1", "3", "64", "64"]
    assert client.get_server_metadata(as_json=True)["name"] == "shoal"
    names = {model["name"] for model in client.get_model_repository_index(as_json=True)["models"]}
    assert "fixture" in names and "fixture.rf-32" in names


def test_infer_matches_onnxruntime(client, server):
    images = np.random.default_rng(9).random((2, 3, 16, 16), dtype=np.float32)
    tensor = triton_grpc.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer("fixture.rf-16", [tensor], outputs=[triton_grpc.InferRequestedOutput("logits")], parameters={"slo_ms": 1000})
    session = onnxruntime.InferenceSession(str(server.repository / "fixture" / "rf-16" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(result.as_numpy("logits"), session.run(None, {"images": images})[0], rtol=1e-5, atol=1e-5)
    assert result.get_response(as_json=True)["parameters"]["shoal_variant"]["string_param"] == "fixture.rf-16"


def test_errors_map_to_status_codes(client):
    tensor = triton_grpc.InferInput("images", [1, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException) as missing:
        client.infer("missing", [tensor])
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    wrong = triton_grpc.InferInput("images", [1, 3, 16, 8], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 16, 8), np.float32))
    with pytest.raises(InferenceServerException) as bad:
        client.infer("fixture.rf-16", [wrong])
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and "[batch, 3, S, S]" in bad.value.message()
    assert client.is_server_ready()


def test_unmeetable_requirements_are_failed_precondition_with_alternatives(server):
    import json

    import grpc

    # tritonclient's own stubs: the same KServe v2 proto (shoal's would clash with them in one process).
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="fixture")
    request.inputs.add(name="images", datatype="FP32", shape=[1, 3, 64, 64])
    request.raw_input_contents.append(np.zeros((1, 3, 64, 64), np.float32).tobytes())
    request.parameters["min_accuracy"].double_param = 1.0
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailers = dict(refused.value.trailing_metadata())
    alternatives = json.loads(trailers["shoal-alternatives"])
    assert alternatives[0]["relax"] == "min_accuracy" and alternatives[0]["value"] < 1.0


def test_a_stream_answers_every_request_by_its_id_and_a_bad_one_does_not_end_it(client, server):
    """Triton's ModelStreamInfer, as tritonclient.grpc's start_stream / async_stream_infer use it."""
    import queue

    answers: queue.Queue = queue.Queue()
    sent = {}
    rng = np.random.default_rng(4)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for index in range(8):
            images = rng.random((1, 3, 16, 16), dtype=np.float32)
            tensor = triton_grpc.InferInput("images", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            sent[f"r{index}"] = images
            client.async_stream_infer("fixture.rf-16", [tensor], request_id=f"r{index}", parameters={"slo_ms": 1000})
            if index == 3:
                wrong = triton_grpc.InferInput("images", [1, 3, 16, 8], "FP32")
                wrong.set_data_from_numpy(np.zeros((1, 3, 16, 8), np.float32))
                client.async_stream_infer("fixture.rf-16", [wrong], request_id="wrong")
    finally:
        client.stop_stream()  # closes our side and waits for every answer
    received = [answers.get_nowait() for _ in range(answers.qsize())]
    errors = [error for result, error in received if error is not None]
    results = {result.get_response().id: result for result, error in received if error is None}
    assert len(received) == 9  # one answer per request, no more
    assert len(errors) == 1 and "[batch, 3, S, S]" in errors[0].message() and "request 'wrong'" in errors[0].message()
    assert sorted(results) == sorted(sent)
    session = onnxruntime.InferenceSession(str(server.repository / "fixture" / "rf-16" / "model.onnx"), providers=["CPUExecutionProvider"])
    for request_id, images in sent.items():
        np.testing.assert_allclose(results[request_id].as_numpy("logits"), session.run(None, {"images": images})[0], rtol=1e-5, atol=1e-5)
    assert client.is_server_ready()


def test_a_stream_the_client_cancels_leaves_the_server_serving(client, server):
    answers = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    images = np.zeros((1, 3, 16, 16), np.float32)
    tensor = triton_grpc.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    for index in range(4):
        client.async_stream_infer("fixture.rf-16", [tensor], request_id=f"c{index}", parameters={"slo_ms": 1000})
    client.stop_stream(cancel_requests=True)
    assert len(answers) <= 4  # never more than one answer per request, even when cancelled
    assert all(error is None or "cancel" in error.message().lower() for _, error in answers)
    result = client.infer("fixture.rf-16", [tensor], parameters={"slo_ms": 1000})  # the server goes on
    assert result.as_numpy("logits").shape[0] == 1
    # And a new stream on the same client works.
    again = []
    client.start_stream(callback=lambda result, error: again.append((result, error)))
    client.async_stream_infer("fixture.rf-16", [tensor], request_id="after")
    client.stop_stream()
    assert len(again) == 1 and again[0][1] is None and again[0][0].get_response().id == "after"


def test_a_version_other_than_1_is_not_found(client):
    tensor = triton_grpc.InferInput("images", [1, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    assert client.infer("fixture.rf-16", [tensor], model_version="1").as_numpy("logits").shape[0] == 1
    for call in (lambda: client.infer("fixture.rf-16", [tensor], model_version="2"),
                 lambda: client.get_model_metadata("fixture.rf-16", model_version="2"),
                 lambda: client.get_model_config("fixture.rf-16", model_version="2")):  # fmt: skip
        with pytest.raises(InferenceServerException) as missing:
            call()
        assert missing.value.status() == "StatusCode.NOT_FOUND" and "no version '2'" in missing.value.message()
    # As Triton: a version that does not exist is not ready, rather than an error.
    assert client.is_model_ready("fixture.rf-16", "1") and not client.is_model_ready("fixture.rf-16", "2")


def test_model_load_and_unload_need_the_admin_token_and_requests_obey_the_body_limit(fixture_repository_path):
    """As over HTTP: with --admin-token, gRPC's repository calls need 'authorization: Bearer
    <token>' metadata, and --max-body-mb bounds a request's size."""
    from .conftest import start_server, stop_server  # noqa: TID252

    server = start_server(fixture_repository_path, "--admin-token", "s3cret", "--preload", "fixture.rf-16", "--idle-unload-s", "1000",
                          "--max-body-mb", "1")  # fmt: skip
    try:
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        for call in (client.load_model, client.unload_model):
            for headers in (None, {"authorization": "Bearer wrong"}):
                with pytest.raises(InferenceServerException, match="Bearer") as refused:
                    call("fixture.rf-16", headers=headers)
                assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert client.is_model_ready("fixture.rf-16")  # the refused unloads did nothing
        client.unload_model("fixture.rf-16", headers={"authorization": "Bearer s3cret"})
        assert not client.is_model_ready("fixture.rf-16")
        client.load_model("fixture.rf-16", headers={"authorization": "Bearer s3cret"})
        assert client.is_model_ready("fixture.rf-16")
        large = triton_grpc.InferInput("images", [12, 3, 128, 128], "FP32")  # 2.4 MB
        large.set_data_from_numpy(np.zeros((12, 3, 128, 128), np.float32))
        with pytest.raises(InferenceServerException) as too_large:
            client.infer("fixture.rf-16", [large])
        assert too_large.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        stop_server(server)


def _top_indices(logits: np.ndarray, count: int) -> list[list[int]]:
    return [list(np.argsort(-row, kind="stable")[:count]) for row in logits]


def _parsed(classes: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """The indices and values of a classification output's `<value>:<index>` strings."""
    # bytes from binary answers; tritonclient gives str for JSON ones
    split = [[(element.decode() if isinstance(element, bytes) else element).split(":") for element in row] for row in classes]
    return [[int(index) for _, index, *_ in row] for row in split], np.array([[float(value) for value, *_ in row] for row in split])


def test_class_count_answers_the_top_classes_over_grpc_and_http(client, server):
    """Triton's classification extension (tritonclient's class_count): each item's highest
    logits as `<value>:<index>` strings, highest first; it used to be refused."""
    images = np.random.default_rng(5).random((2, 3, 16, 16), dtype=np.float32)
    tensor = triton_grpc.InferInput("images", [2, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(images)
    logits = client.infer("fixture.rf-16", [tensor], outputs=[triton_grpc.InferRequestedOutput("logits")]).as_numpy("logits")
    classes = client.infer("fixture.rf-16", [tensor], outputs=[triton_grpc.InferRequestedOutput("logits", class_count=3)]).as_numpy("logits")
    assert classes.shape == (2, 3)
    indices, values = _parsed(classes)
    assert indices == _top_indices(logits, 3)
    np.testing.assert_allclose(values, np.take_along_axis(logits, np.array(indices), axis=1), atol=1e-5)
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    http_tensor = triton_http.InferInput("images", [2, 3, 16, 16], "FP32")
    http_tensor.set_data_from_numpy(images)
    for binary in (True, False):
        answer = http.infer("fixture.rf-16", [http_tensor], outputs=[triton_http.InferRequestedOutput("logits", binary_data=binary, class_count=2)])
        assert _parsed(answer.as_numpy("logits"))[0] == _top_indices(logits, 2), binary
        assert answer.get_output("logits")["datatype"] == "BYTES"
    # More classes than the model has: every class, in order
    everything = client.infer("fixture.rf-16", [tensor], outputs=[triton_grpc.InferRequestedOutput("logits", class_count=1000)]).as_numpy("logits")
    assert _parsed(everything)[0] == _top_indices(logits, logits.shape[1])
    assert "classification" in http.get_server_metadata()["extensions"]


def test_the_index_can_list_only_ready_models(client, server):
    """RepositoryIndex(ready=True) listed models that were not ready."""
    import httpx

    client.unload_model("fixture.rf-64")  # one not ready (loaded again below: the server is the session's)
    everything = client.get_model_repository_index(as_json=True)["models"]
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc  # (its client sends no ready flag)

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        ready = service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True)).models
    assert {model.state for model in ready} == {"READY"}
    assert {model.name for model in ready} == {model["name"] for model in everything if model.get("state") == "READY"}
    over_http = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True}).json()
    client.load_model("fixture.rf-64")
    assert "fixture.rf-64" not in {model.name for model in ready} and len(ready) == len(everything) - 1
    assert {entry["name"] for entry in over_http} == {model.name for model in ready}
    long_header = httpx.post(f"{server.url}/v2/models/fixture.rf-16/infer", content=b"{}", headers={"Inference-Header-Content-Length": "9" * 5000})
    assert long_header.status_code == 400  # a 500 (int() past 4,300 digits) before
