"""Model-less serving on a real server: requirements, refusals with alternatives, autoscaling."""

from __future__ import annotations

import re
import threading
import time

import httpx
import numpy as np
import pytest

from shoal.zoo.repository import ModelRepository

from .conftest import start_server, stop_server


def _body(parameters: dict, size: int = 64) -> dict:
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    return {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(image.shape), "data": image.ravel().tolist()}], "parameters": parameters}


def _replicas(server, key: str) -> int:
    return httpx.get(f"{server.url}/v2/repository/replicas").json()[key]


@pytest.fixture(scope="module")
def accuracies(fixture_repository_path):
    return {v.name: v.accuracy for v in ModelRepository(fixture_repository_path).variants("fixture")}


@pytest.fixture(scope="module")
def modelless_server(fixture_repository_path):
    server = start_server(
        fixture_repository_path, "--workers", "3", "--policy", "modelless", "--autoscale", "--autoscale-hold-s", "4",
        "--autoscale-slack", "2000", "--control-interval-s", "0.25", "--preload", "fixture.rf-64",
    )
    yield server
    stop_server(server)


def test_unmeetable_requirements_get_422_with_the_relaxations_that_would_work(modelless_server, accuracies):
    best = max(accuracies.values())
    answer = httpx.post(f"{modelless_server.url}/v2/models/fixture/infer", json=_body({"slo_ms": 1000, "min_accuracy": min(1.0, best + 0.05)}), timeout=30)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert "alternatives" in body["error"]
    (relax,) = [a for a in body["alternatives"] if a["relax"] == "min_accuracy"]
    assert relax["value"] == pytest.approx(best) and relax["variant"] == "fixture.rf-64"
    cheap = httpx.post(f"{modelless_server.url}/v2/models/fixture/infer", json=_body({"slo_ms": 1000, "max_cost_per_1000_usd": 1e-12}), timeout=30)
    assert cheap.status_code == 422 and cheap.json()["alternatives"][0]["relax"] == "max_cost_per_1000_usd"
    bad = httpx.post(f"{modelless_server.url}/v2/models/fixture/infer", json=_body({"max_cost_per_1000_usd": "cheap"}), timeout=30)
    assert bad.status_code == 400 and "max_cost_per_1000_usd" in bad.json()["error"]


def test_load_up_scales_out_and_load_down_scales_back_after_the_hold(modelless_server, accuracies):
    url = f"{modelless_server.url}/v2/models/fixture/infer"
    parameters = {"slo_ms": 2000, "min_accuracy": accuracies["rf-64"]}  # only rf-64 qualifies
    deadline = time.monotonic() + 20
    while _replicas(modelless_server, "fixture.rf-64") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # no demand yet: the preloaded replicas go once the hold has passed
    assert _replicas(modelless_server, "fixture.rf-64") == 0
    first = httpx.post(url, json=_body(parameters), timeout=30)  # loads one replica for itself
    assert first.status_code == 200, first.text
    assert first.json()["parameters"]["shoal_variant"] == "fixture.rf-64"

    stop = threading.Event()
    answered = []

    def client():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                answered.append(http.post(url, json=_body(parameters)).status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    try:
        while _replicas(modelless_server, "fixture.rf-64") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _replicas(modelless_server, "fixture.rf-64") == 3  # scaled out to every worker
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    # Idle now: demand fits fewer replicas, which the autoscaler applies only after its 4 s hold.
    assert _replicas(modelless_server, "fixture.rf-64") == 3
    assert answered and answered.count(200) >= 0.9 * len(answered) and set(answered) <= {200, 429}
    deadline = time.monotonic() + 20
    while _replicas(modelless_server, "fixture.rf-64") == 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _replicas(modelless_server, "fixture.rf-64") < 3
    metrics = httpx.get(f"{modelless_server.url}/metrics").text
    kinds = set(re.findall(r'shoal_autoscale_decisions_total\{kind="([a-z-]+)",variant="fixture.rf-64"\}', metrics))
    assert {"scale-up", "scale-down"} <= kinds or {"vertical-in", "scale-down"} <= kinds, kinds


def test_the_python_sdk_states_requirements_and_surfaces_refusals(modelless_server, accuracies):
    from shoal.client.query import QueryClient, RequirementsUnmet

    images = np.random.default_rng(3).integers(0, 256, size=(2, 3, 64, 64), dtype=np.uint8)
    with QueryClient(modelless_server.url) as client:
        answer = client.infer("fixture", images, slo_ms=2000, min_accuracy=accuracies["rf-64"])
        assert answer.outputs.shape == (2, 10) and answer.variant == "fixture.rf-64"
        with pytest.raises(RequirementsUnmet) as refused:
            client.infer("fixture", images, slo_ms=2000, min_accuracy=1.0)
        assert refused.value.status == 422 and refused.value.alternatives[0]["relax"] == "min_accuracy"


def test_registration_over_http_measures_then_makes_the_variant_selectable(fixture_repository_path, tmp_path):
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(fixture_repository_path, root)
    repository = ModelRepository(root)
    model_bytes = repository.model_path("fixture", "rf-64").read_bytes()  # a valid model under a new name
    server = start_server(root, "--policy", "modelless", "--admin-token", "secret", "--preload", "fixture.rf-16")
    try:
        url = f"{server.url}/v2/repository/families/fixture/variants/rf-64-copy"
        refused = httpx.post(url, content=model_bytes, timeout=60)
        assert refused.status_code == 401
        garbage = httpx.post(url, content=b"not onnx", headers={"Authorization": "Bearer secret"}, timeout=60)
        assert garbage.status_code == 400 and not (root / "fixture" / "rf-64-copy").exists()
        # The error names what was sent, not the server's scratch file.
        assert "the uploaded model" in garbage.json()["error"] and "/tmp" not in garbage.json()["error"], garbage.text
        created = httpx.post(url, content=model_bytes, headers={"Authorization": "Bearer secret"}, timeout=120)
        assert created.status_code == 201, created.text
        answer = created.json()
        assert answer["model"] == "fixture.rf-64-copy"
        assert answer["accuracy"] == pytest.approx(repository.load_variant("fixture", "rf-64").accuracy)
        assert answer["latency_ms_batch_1"] > 0 and (root / "fixture" / "rf-64-copy" / "profiles" / "cpu.json").is_file()
        again = httpx.post(url, content=model_bytes, headers={"Authorization": "Bearer secret"}, timeout=60)
        assert again.status_code == 400 and "already exists" in again.json()["error"]
        # Selectable at once: only variants with a profile are candidates (rf-16, loaded, and the
        # new one; rf-64 itself has never been loaded or profiled); rf-16 is not accurate enough,
        # so the new variant is loaded for the query.
        served = httpx.post(f"{server.url}/v2/models/fixture/infer", json=_body({"slo_ms": 5000, "min_accuracy": answer["accuracy"]}), timeout=60)
        assert served.status_code == 200, served.text
        assert served.json()["parameters"]["shoal_variant"] == "fixture.rf-64-copy"
    finally:
        stop_server(server)


def test_the_sdk_sends_the_server_what_is_left_of_the_slo_after_its_own_overhead(modelless_server):
    from shoal.client.query import QueryClient

    images = np.zeros((1, 3, 64, 64), dtype=np.float32)
    with QueryClient(modelless_server.url) as client:
        client.infer("fixture", images, slo_ms=2000)
        assert client.last_parameters["slo_ms"] == 2000  # nothing measured yet
        for _ in range(5):
            client.infer("fixture", images, slo_ms=2000)
        overhead_before = client.overhead_ms
        assert overhead_before > 0.0
        client.infer("fixture", images, slo_ms=2000)
        assert client.last_parameters["slo_ms"] == pytest.approx(2000 - overhead_before)
