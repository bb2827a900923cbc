"""Triton's statistics extension and model configuration, over HTTP and gRPC, read with tritonclient."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from shoal.runtime.statistics import VariantStatistics
from shoal.runtime.worker_manager import ServeConfig


def test_the_counts_follow_tritons_definitions():
    stats = VariantStatistics()
    assert stats.as_json("f.v")["last_inference"] == 0
    stats.batch_ran(3, 2.0)
    stats.batch_ran(1, 1.5)
    stats.answered(items=2, queue_ms=0.5, compute_ms=2.0, total_ms=4.0)
    stats.answered(items=1, queue_ms=1.0, compute_ms=1.5, total_ms=5.0)
    stats.failed(50.25)  # e.g. the third item of the first batch, dropped after it ran
    entry = stats.as_json("f.v")
    assert (entry["inference_count"], entry["execution_count"]) == (3, 2)  # items answered, batches run
    assert entry["inference_stats"]["success"] == {"count": 2, "ns": 9_000_000}
    assert entry["inference_stats"]["queue"] == {"count": 2, "ns": 1_500_000}
    assert entry["inference_stats"]["fail"] == {"count": 1, "ns": 50_250_000}
    # an answered request is charged its batch's compute time once; per batch size, batches count
    assert entry["inference_stats"]["compute_infer"] == {"count": 2, "ns": 3_500_000}
    assert entry["inference_stats"]["compute_input"] == {"count": 2, "ns": 0}  # not timed apart
    assert entry["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    assert [(batch["batch_size"], batch["compute_infer"]) for batch in entry["batch_stats"]] == [
        (1, {"count": 1, "ns": 1_500_000}), (3, {"count": 1, "ns": 2_000_000})]
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
    assert after["inference_stats"]["compute_infer"]["count"] - before["inference_stats"]["compute_infer"]["count"] == 2
    assert after["execution_count"] > before["execution_count"] and after["last_inference"] >= before["last_inference"]
    # A family's request counts under the variant that answered it.
    def successes() -> dict[str, int]:
        return {entry["name"]: entry["inference_stats"]["success"]["count"] for entry in http.get_inference_statistics("fixture")["model_stats"]}

    family_before = successes()
    frame = np.zeros((1, 3, 128, 128), np.float32)
    tensor = triton_http.InferInput("images", list(frame.shape), "FP32")
    tensor.set_data_from_numpy(frame)
    served_by = http.infer("fixture", [tensor], parameters={"slo_ms": 500}).get_response()["parameters"]["shoal_variant"]
    family_after = successes()
    assert family_after[served_by] == family_before[served_by] + 1
    assert all(family_after[name] == count for name, count in family_before.items() if name != served_by)
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
    # As in Triton: the most items one request may carry, and the batches the server forms
    assert config["max_batch_size"] == ServeConfig.max_request_items
    assert config["dynamic_batching"]["preferred_batch_size"] == [ServeConfig.max_batch_size]
    for items, accepted in ((ServeConfig.max_batch_size + 8, True), (ServeConfig.max_request_items + 1, False)):
        tensor = triton_http.InferInput("images", [items, 3, 16, 16], "FP32")
        tensor.set_data_from_numpy(np.zeros((items, 3, 16, 16), np.float32))
        if accepted:  # more than one batch's worth: split over batches, every item answered
            assert http.infer("fixture.rf-16", [tensor], parameters={"slo_ms": 5000}).as_numpy("logits").shape[0] == items
        else:
            with pytest.raises(InferenceServerException, match=str(ServeConfig.max_request_items)):
                http.infer("fixture.rf-16", [tensor], parameters={"slo_ms": 5000})
    assert config["input"] == [{"name": "images", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 16, 16]}]
    assert config["output"][0]["name"] == "logits" and len(config["output"][0]["dims"]) == 1
    over_grpc = grpc.get_model_config("fixture.rf-16", as_json=True)["config"]
    assert over_grpc["max_batch_size"] == config["max_batch_size"]
    assert over_grpc["dynamic_batching"]["preferred_batch_size"] == [ServeConfig.max_batch_size]
    assert [int(dim) for dim in over_grpc["input"][0]["dims"]] == [3, 16, 16] and over_grpc["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(dim) for dim in over_grpc["output"][0]["dims"]] == config["output"][0]["dims"]
    assert http.get_model_config("fixture")["platform"] == "shoal_family"
    missing = httpx.get(f"{server.url}/v2/models/missing/config")
    assert missing.status_code == 404


def test_a_cancelled_request_and_a_gate_refusal_count_as_failures(fixture_repository_path):
    import asyncio

    from shoal.core.models import Profile
    from shoal.profiler.measure import summarise_latencies
    from shoal.runtime.service import InferenceService
    from shoal.runtime.worker_manager import ServeConfig

    from .test_scheduler import FakeWorker

    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=()))

        async def no_processes() -> None:
            return None

        service.manager.start = no_processes  # the batch runs on a slow fake worker below
        await service.start()
        key = "fixture.rf-16"
        service.variants[key].latency = Profile(family="fixture", variant="rf-16", device="cpu", load_time_ms=1.0,
                                                batches={size: summarise_latencies(size, [0.5] * 5) for size in (1, 2)})  # fmt: skip
        service.scheduler.attach_worker(FakeWorker("slow", 200.0, variants=(key,)))
        request = asyncio.create_task(service.infer(key, {"images": np.zeros((1, 3, 16, 16), np.float32)}, {"slo_ms": 1000}, []))
        await asyncio.sleep(0.02)  # queued and running on the worker
        request.cancel()  # what a gRPC cancel or a closed stream does to its handler
        with pytest.raises(asyncio.CancelledError):
            await request
        service.scheduler.loop_monitor.lag_ms, service.scheduler.loop_monitor.busy_share = 1000.0, 1.0  # a saturated loop
        assert service.refuse_at_gate(key)
        (entry,) = service.model_statistics(key)
        text = service.metrics.render().decode()
        await service.stop()
        return entry, text

    entry, text = asyncio.run(scenario())
    assert entry["inference_stats"]["fail"]["count"] == 2 and entry["inference_stats"]["success"]["count"] == 0
    assert 'outcome="cancelled",variant="fixture.rf-16"} 1.0' in text


def test_the_model_config_names_the_batch_sizes_the_shared_memory_slots_allow(fixture_repository_path):
    """A worker's slot holds fewer large images than `--max-batch-size`: the config's preferred
    batch size is the batch really formed (it said `--max-batch-size` whatever the slot held)."""
    import asyncio

    from shoal.runtime.batch_block import BATCH_SLOTS
    from shoal.runtime.endpoints import ServedModels
    from shoal.runtime.service import InferenceService
    from shoal.runtime.worker_manager import ServeConfig

    # Room for 10 float32 items of 3x16x16 per batch (a slot's input half).
    block_bytes = BATCH_SLOTS * 2 * 10 * 4 * 3 * 16 * 16

    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, preload=(), max_batch_size=32, shared_memory_bytes=block_bytes))

        async def no_processes() -> None:
            return None

        service.manager.start = no_processes
        await service.start()
        served = ServedModels(service)
        sizes = {name: served.config(name)["dynamic_batching"]["preferred_batch_size"] for name in ("fixture.rf-16", "fixture")}
        caps = {key: queue.max_batch_size for key, queue in service.scheduler.queues.items()}
        await service.stop()
        return sizes, caps

    sizes, caps = asyncio.run(scenario())
    assert sizes["fixture.rf-16"] == [10] == [caps["fixture.rf-16"]]
    assert sizes["fixture"] == sorted(set(caps.values())) and len(sizes["fixture"]) > 1 and max(sizes["fixture"]) <= 10
