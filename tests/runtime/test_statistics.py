"""Triton's statistics extension and model configuration, over HTTP and gRPC, read with tritonclient."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from shoal.runtime.statistics import VariantStatistics


def test_the_counts_follow_tritons_definitions():
    stats = VariantStatistics()
    stats.batch_ran(3, 2.0)
    stats.batch_ran(1, 1.5)
    stats.answered(items=2, queue_ms=0.5, total_ms=4.0)
    stats.answered(items=2, queue_ms=1.0, total_ms=5.0)
    stats.failed(50.25)
    entry = stats.as_json("f.v")
    assert (entry["inference_count"], entry["execution_count"]) == (4, 2)
    assert entry["inference_stats"]["success"] == {"count": 2, "ns": 9_000_000}
    assert entry["inference_stats"]["queue"] == {"count": 2, "ns": 1_500_000}
    assert entry["inference_stats"]["fail"] == {"count": 1, "ns": 50_250_000}
    # every item is charged its whole batch's compute time; per batch size, batches are counted
    assert entry["inference_stats"]["compute_infer"] == {"count": 4, "ns": 3 * 2_000_000 + 1_500_000}
    assert entry["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 1_500_000}},
                                    {"batch_size": 3, "compute_infer": {"count": 1, "ns": 2_000_000}}]  # fmt: skip
    assert entry["last_inference"] > 0 and entry["version"] == "1"


def _infer(client, images, **parameters):
    tensor = triton_http.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return client.infer("fixture.rf-16", [tensor], parameters=parameters or None)


def test_http_and_grpc_statistics_count_what_was_served(server):
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    (before,) = http.get_inference_statistics("fixture.rf-16")["model_stats"]
    _infer(http, np.zeros((1, 3, 16, 16), np.float32))
    _infer(http, np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(Exception):  # a 1 us SLO cannot be met: counted as a failure
        _infer(http, np.zeros((1, 3, 16, 16), np.float32), slo_ms=0.001)
    (after,) = http.get_inference_statistics("fixture.rf-16")["model_stats"]
    assert after["name"] == "fixture.rf-16"
    assert after["inference_count"] - before["inference_count"] == 3  # items
    for kind, requests in (("success", 2), ("queue", 2), ("fail", 1)):
        assert after["inference_stats"][kind]["count"] - before["inference_stats"][kind]["count"] == requests
        assert int(after["inference_stats"][kind]["ns"]) > int(before["inference_stats"][kind]["ns"])
    assert after["inference_stats"]["compute_infer"]["count"] - before["inference_stats"]["compute_infer"]["count"] == 3
    assert sum(batch["compute_infer"]["count"] for batch in after["batch_stats"]) == after["execution_count"]
    # gRPC answers from the same numbers (tritonclient's JSON of the proto: uint64 as strings)
    (over_grpc,) = grpc.get_inference_statistics("fixture.rf-16", as_json=True)["model_stats"]
    assert int(over_grpc["inference_count"]) == after["inference_count"]
    assert int(over_grpc["inference_stats"]["success"]["count"]) == after["inference_stats"]["success"]["count"]
    assert [int(batch["batch_size"]) for batch in over_grpc["batch_stats"]] == [batch["batch_size"] for batch in after["batch_stats"]]
    # A family lists its variants; no name lists every variant; an unknown model is a 404.
    family = {entry["name"] for entry in http.get_inference_statistics("fixture")["model_stats"]}
    everything = {entry["name"] for entry in httpx.get(f"{server.url}/v2/models/stats").json()["model_stats"]}
    assert "fixture.rf-16" in family and family <= everything and all(name.startswith("fixture.") for name in family)
    missing = httpx.get(f"{server.url}/v2/models/missing/stats")
    assert missing.status_code == 404 and "missing" in missing.json()["error"]
    assert "statistics" in http.get_server_metadata()["extensions"]


def test_tritonclient_reads_the_model_config_over_http_and_grpc(server):
    http = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    config = http.get_model_config("fixture.rf-16")
    assert (config["name"], config["platform"], config["backend"]) == ("fixture.rf-16", "onnxruntime_onnx", "onnxruntime")
    assert config["max_batch_size"] >= 1
    assert config["input"] == [{"name": "images", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 16, 16]}]
    assert config["output"][0]["name"] == "logits" and len(config["output"][0]["dims"]) == 1
    over_grpc = grpc.get_model_config("fixture.rf-16", as_json=True)["config"]
    assert over_grpc["max_batch_size"] == config["max_batch_size"]
    assert [int(dim) for dim in over_grpc["input"][0]["dims"]] == [3, 16, 16] and over_grpc["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(dim) for dim in over_grpc["output"][0]["dims"]] == config["output"][0]["dims"]
    assert http.get_model_config("fixture")["platform"] == "shoal_family"
    missing = httpx.get(f"{server.url}/v2/models/missing/config")
    assert missing.status_code == 404
