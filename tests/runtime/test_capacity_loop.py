"""The capacity control loop service against a real `shoal serve` process, and its REST edge."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
import yaml

from shoal.cli import main
from shoal.core.errors import InvalidInputError
from shoal.formats.inferno import load_system
from shoal.planner.capacity import plan_capacity
from shoal.runtime.capacity_actuators import KubernetesActuator, RuntimeReplicaActuator
from shoal.runtime.capacity_loop import CapacityLoop, build_app, load_control_file, parse_metrics
from shoal.runtime.metrics import ServingMetrics

from .conftest import free_port, start_server, stop_server  # noqa: TID252

VARIANTS = ("fixture.rf-16", "fixture.rf-32", "fixture.rf-64")


@contextlib.contextmanager
def serving(app):
    """The loop's app under uvicorn on a thread of this process (lifespan included)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the loop app did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=120) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def control_document(**hysteresis) -> dict:
    """One CPU worker type; a fictitious 2 s per input against a 5 s target, so that anything
    above 0.5 requests per second needs more than one replica (two worker processes here)."""
    return {
        "system": {
            "accelerators": [{"name": "cpu-worker", "type": "cpu", "cost_cents_per_hour": 1}],
            "capacity": {"cpu": 1000},
            "models": [{"name": v, "accelerator": "cpu-worker", "batch_latency_ms": {1: 2000}} for v in VARIANTS],
            "service_classes": [{"name": "default", "priority": 1,
                                 "targets": [{"model": v, "latency_ms": 5000} for v in VARIANTS]}],
            "servers": [{"name": v.split(".")[1].replace("-", ""), "service_class": "default", "model": v,
                         "arrival_rate_rps": 0} for v in VARIANTS],
        },
        "variants": {v: {"server": v.split(".")[1].replace("-", "")} for v in VARIANTS},
        "hysteresis": hysteresis,
    }


def write_control_file(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def runtime(fixture_repository_path):
    preload = [arg for variant in VARIANTS for arg in ("--preload", variant)]
    # Small batches keep the warm-up of six (variant, worker) pairs short on a busy machine.
    server = start_server(fixture_repository_path, "--workers", "2", "--threads", "1", "--max-batch-size", "4",
                          "--idle-unload-s", "100000", *preload, timeout_s=120)
    yield server
    stop_server(server)


def set_replicas(url: str, counts: dict[str, int]) -> None:
    for variant, count in counts.items():
        assert httpx.post(f"{url}/v2/repository/models/{variant}/replicas", json={"replicas": count}, timeout=60).status_code == 200


def send_load(url: str, variant: str, num_requests: int = 60) -> None:
    image = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    body = {"inputs": [{"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": image.ravel().tolist()}]}

    def send(count: int) -> None:
        with httpx.Client() as client:
            for _ in range(count):
                assert client.post(f"{url}/v2/models/{variant}/infer", json=body, timeout=30).status_code == 200

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(send, [num_requests // 3] * 3))


def test_invoke_scales_the_runtime_as_the_plan_says(runtime, tmp_path):
    set_replicas(runtime.url, {"fixture.rf-16": 1, "fixture.rf-32": 1, "fixture.rf-64": 1})
    spec = load_control_file(write_control_file(tmp_path, control_document(scale_down_delay_s=600)))
    loop = CapacityLoop(spec=spec, runtime_url=runtime.url, actuator=RuntimeReplicaActuator(runtime.url), min_window_s=0.2)
    with serving(build_app(loop)) as client:  # the app takes its baseline sample on start
        send_load(runtime.url, "fixture.rf-32")
        response = client.get("/invoke")
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["ok"] and report["actuator"] == "runtime"
        assert report["collected"]["fixture.rf-32"]["arrival_rate_rps"] > 0
        assert report["collected"]["fixture.rf-16"]["arrival_rate_rps"] == 0
        planned = report["optimized"]["servers"]
        wanted = planned["rf32"]["numReplicas"]
        assert planned["rf32"]["status"] == "served" and wanted >= 2
        assert planned["rf16"]["numReplicas"] == planned["rf64"]["numReplicas"] == 0  # idle
        decided = {d["server"]: d for d in report["decided"]}
        assert (decided["rf32"]["current"], decided["rf32"]["target"]) == (1, wanted)
        assert decided["rf32"]["reason"] == f"scale-up from 1 to {wanted}"
        assert decided["rf16"]["target"] == 1 and decided["rf16"]["reason"] == "at the planned count (bounded from 0)"
        # The runtime has two worker processes: it reaches two replicas and says so.
        assert report["applied"] == [{"server": "rf32", "target": wanted, "reached": 2,
                                      "status": "capped" if wanted > 2 else "applied",
                                      "detail": "the runtime reached 2: it has no more worker processes" if wanted > 2 else ""}]
        counts = httpx.get(f"{runtime.url}/v2/repository/replicas").json()
        assert counts == {"fixture.rf-16": 1, "fixture.rf-32": 2, "fixture.rf-64": 1}
        assert client.get("/report").json() == report

        # No more load: the planner wants 0 (bounded to 1), but the scale-down delay holds 2.
        report = client.get("/invoke").json()
        decided = {d["server"]: d for d in report["decided"]}
        assert decided["rf32"]["target"] == 2 and "scale-down to 1 waits" in decided["rf32"]["reason"]
        assert report["applied"] == []
        assert httpx.get(f"{runtime.url}/v2/repository/replicas").json()["fixture.rf-32"] == 2
        health = client.get("/healthz").json()
        assert (health["cycles"], health["failed_cycles"], health["invocable"]) == (2, 0, True)


def test_kubernetes_patches_follow_the_plan_without_touching_the_runtime(runtime, tmp_path):
    set_replicas(runtime.url, {"fixture.rf-16": 1, "fixture.rf-32": 1, "fixture.rf-64": 1})
    spec = load_control_file(write_control_file(tmp_path, control_document()))
    actuator = KubernetesActuator(namespace="serving", emit_dir=tmp_path / "patches")
    loop = CapacityLoop(spec=spec, runtime_url=runtime.url, actuator=actuator)
    with serving(build_app(loop)) as client:
        send_load(runtime.url, "fixture.rf-32", 30)
        report = client.get("/invoke").json()
    wanted = report["optimized"]["servers"]["rf32"]["numReplicas"]
    assert wanted >= 2
    assert {r["server"]: (r["status"], r["target"]) for r in report["applied"]} == {
        "rf16": ("written", 1), "rf32": ("written", wanted), "rf64": ("written", 1)}
    patches = tmp_path / "patches"
    assert json.loads((patches / "rf32.json").read_text()) == {"spec": {"replicas": wanted}}
    assert json.loads((patches / "rf16.json").read_text()) == {"spec": {"replicas": 1}}
    index = json.loads((patches / "index.json").read_text())
    assert [p["selector"] for p in index["patches"]] == ["shoal.ai/server=rf16", "shoal.ai/server=rf32", "shoal.ai/server=rf64"]
    assert httpx.get(f"{runtime.url}/v2/repository/replicas").json()["fixture.rf-32"] == 1


def test_the_background_loop_runs_cycles_every_interval(runtime, tmp_path):
    spec = load_control_file(write_control_file(tmp_path, control_document()))
    loop = CapacityLoop(spec=spec, runtime_url=runtime.url, actuator=KubernetesActuator(emit_dir=tmp_path / "patches"),
                        min_window_s=0.1)
    with serving(build_app(loop, interval_s=0.05)) as client:
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["cycles"] < 2:
            assert time.monotonic() < deadline, "no background cycles"
            time.sleep(0.05)
        report = client.get("/report").json()
    assert report["ok"] and report["cycle"] >= 2 and report["applied"] == []  # written once, then at the planned count
    assert json.loads((tmp_path / "patches" / "rf32.json").read_text()) == {"spec": {"replicas": 1}}


class BrokenActuator(KubernetesActuator):
    async def apply(self, changes):
        raise RuntimeError("backend exploded")


def test_an_unexpected_failure_is_a_500_and_the_service_goes_on(runtime, tmp_path):
    spec = load_control_file(write_control_file(tmp_path, control_document()))
    loop = CapacityLoop(spec=spec, runtime_url=runtime.url, actuator=BrokenActuator(emit_dir=tmp_path), min_window_s=0.1)
    with serving(build_app(loop)) as client:
        response = client.get("/invoke")
        assert response.status_code == 500 and response.json()["stage"] == "internal"
        assert "RuntimeError('backend exploded')" in response.json()["error"]
        assert client.get("/healthz").json()["failed_cycles"] == 1


def test_a_dead_runtime_fails_the_cycle_and_changes_nothing(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    spec = load_control_file(write_control_file(tmp_path, control_document()))
    loop = CapacityLoop(spec=spec, runtime_url=url, actuator=KubernetesActuator(emit_dir=tmp_path / "patches"))
    with serving(build_app(loop)) as client:
        response = client.get("/invoke")
        assert response.status_code == 502 and response.json()["stage"] == "collect"
        assert response.json()["error"].startswith(f"GET {url}/metrics failed")
        assert client.get("/healthz").json()["failed_cycles"] == 1
    assert not list((tmp_path / "patches").iterdir())


# --------------------------------------------------------------------------------------------
# POST /optimize
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dir(anchors_dir):
    return anchors_dir / "inferno" / "sample-data@849e1e8" / "small"


@pytest.fixture()
def optimizer_client():
    with serving(build_app(CapacityLoop())) as client:
        yield client


def test_optimize_returns_what_plan_capacity_returns(optimizer_client, small_dir):
    body = (small_dir / "system-data.json").read_bytes()
    greedy = optimizer_client.post("/optimize", content=body, headers={"content-type": "application/json"}).json()
    assert greedy["total_cost"] == pytest.approx(43_819)
    assert greedy["total_cost"] == pytest.approx(plan_capacity(load_system(small_dir), solver="greedy").total_cost_cents_per_hour)
    assert len(greedy["allocations"]) == 15
    milp = optimizer_client.post("/optimize?solver=milp", content=body).json()
    assert milp["total_cost"] == pytest.approx(41_857.75) and milp["solver"] == "milp"
    unlimited = optimizer_client.post("/optimize?unlimited=true", content=body).json()
    assert unlimited["total_cost"] == pytest.approx(35_924.5)
    # Inferno's parts at the top level are accepted too.
    parts = json.loads(body)["system"]
    assert optimizer_client.post("/optimize", json=parts).json()["total_cost"] == pytest.approx(43_819)


def test_optimize_reads_shoal_yaml(optimizer_client):
    document = control_document()["system"]
    document["servers"][1]["arrival_rate_rps"] = 5
    response = optimizer_client.post("/optimize", content=yaml.safe_dump(document), headers={"content-type": "application/yaml"})
    assert response.status_code == 200, response.text
    allocation = response.json()["allocations"]["rf32"]
    assert (allocation["numReplicas"], allocation["generation"], allocation["load"]["arrivalRate"]) == (17, "profile", 300.0)


@pytest.mark.parametrize(
    "body, query, message",
    [
        (b"", "", "body: is empty"),
        (b"{not json", "", "body: is not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
        (b"[1, 2]", "", "body: must be an object"),
        (b"\xff\xfe", "", "body: is not UTF-8 text"),
        (b'{"system": {"acceleratorData": {"accelerators": []}}}', "", "body: field system.modelData: Field required"),
        (b'{"system": {"acceleratorData": {"accelerators": []}, "modelData": {"models": []}, '
         b'"serviceClassData": {"serviceClasses": []}, "serverData": {"servers": [{"name": "a"}]}}}', "",
         "body: field system.serverData.servers.0.model: Field required"),
        (b"accelerators: []\nmodels: []\nservice_classes: []\nservers: []\nbudget: 3\n", "",
         "body: field budget: Extra inputs are not permitted"),
        (b"accelerators: []\nmodels: [{name: m, accelerator: a, profile: /etc/passwd}]\nservice_classes: []\nservers: []\n", "",
         "body: field models.0.profile: a request body cannot name files; give batch_latency_ms instead"),
        (b"accelerators: []\nmodels: []\nservice_classes: []\nservers: []\n", "?solver=cplex",
         "query parameter solver='cplex' is unknown: use one of greedy, milp"),
        (b"accelerators: []\nmodels: []\nservice_classes: []\nservers: []\n", "?unlimited=maybe",
         "query parameter unlimited='maybe': use true or false"),
        (b'{"system": ' + b"[" * 5000, "", "body: is nested too deep"),  # a RecursionError, a 500 before
        (b"[" * 5000, "", "body: is nested too deep"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(optimizer_client, body, query, message):
    response = optimizer_client.post(f"/optimize{query}", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == message or response.json()["error"].startswith(message)


def test_oversized_bodies_are_413():
    with serving(build_app(CapacityLoop(), max_body_bytes=100)) as client:
        response = client.post("/optimize", content=b"x" * 101)
        assert response.status_code == 413 and "exceeds the limit of 100" in response.json()["error"]


def test_invoke_without_a_control_file_is_a_409(optimizer_client):
    response = optimizer_client.get("/invoke")
    assert response.status_code == 409 and "--base-system" in response.json()["error"]
    assert optimizer_client.get("/report").status_code == 404
    assert optimizer_client.get("/healthz").json()["invocable"] is False


# --------------------------------------------------------------------------------------------
# the control file and the runtime's metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["variants"].update({"rf16": {"server": "rf16"}}), "field variants.rf16: a runtime variant is named <family>.<variant>"),
        (lambda d: d["variants"]["fixture.rf-16"].update(server="gpu"), "field variants.fixture.rf-16.server: 'gpu' is not a server of the system; use one of rf16, rf32, rf64"),
        (lambda d: d["variants"]["fixture.rf-64"].update(server="rf16"), "field variants.fixture.rf-64.server: server 'rf16' is already bound to fixture.rf-16: bind each server once"),
        (lambda d: d["variants"]["fixture.rf-16"].update(min_replicas=3, max_replicas=2), "field variants.fixture.rf-16: variant 'fixture.rf-16': max_replicas must be >= max(min_replicas, 1)"),
        (lambda d: d["hysteresis"].update(scale_down_delay_s=-5), "field hysteresis.scale_down_delay_s: Input should be greater than or equal to 0"),
        (lambda d: d["hysteresis"].update(scale_down_delay_s=float("inf")), "field hysteresis.scale_down_delay_s: Input should be a finite number"),
        (lambda d: d["system"]["servers"][0].pop("model"), "field system.servers.0.model: Field required"),
        (lambda d: d.update(variants={}), "field variants: Dictionary should have at least 1 item"),
    ],
)
def test_control_file_errors_name_the_field(tmp_path, change, message):
    document = control_document()
    change(document)
    path = write_control_file(tmp_path, document)
    with pytest.raises(InvalidInputError) as caught:
        load_control_file(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_control_file_may_name_a_system_file(tmp_path, small_dir):
    path = write_control_file(tmp_path, {"system": str(small_dir), "variants": {"llm.llama-13b": {"server": "Premium-llama_13b"}}})
    spec = load_control_file(path)
    assert len(spec.base.servers) == 15 and spec.bindings[0].server == "Premium-llama_13b"
    assert spec.settings.scale_down_delay_s == 300.0


def test_runtime_metrics_are_read_per_variant():
    metrics = ServingMetrics()
    metrics.answered("fixture", "fixture.rf-32", 1.0, 4.0)  # a family request served by rf-32
    metrics.answered("fixture.rf-32", "fixture.rf-32", 1.0, 6.0)
    metrics.outcome("fixture", "fixture.rf-32", "shed")
    metrics.batch("fixture.rf-32", 2, 3.0)
    metrics.watch_queue("fixture.rf-32", pending=lambda: 3, slowdown=lambda: 1.0, tail_slowdown=lambda: 1.0)
    metrics.child(metrics.request_inputs, "fixture.rf-32").inc(5)
    sample = parse_metrics(metrics.render().decode(), taken_at_s=7.0)
    counters = sample.variants["fixture.rf-32"]
    assert dict(counters.requests_by_outcome) == {"success": 2.0, "shed": 1.0}
    assert (counters.num_batches, counters.batch_items, counters.pending_requests) == (1.0, 2.0, 3.0)
    assert counters.num_answered == 2.0 and counters.answered_seconds == pytest.approx(0.010)
    assert counters.admitted_inputs == 5.0
    assert set(sample.variants) == {"fixture.rf-32"}


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--runtime-url", "http://x"], "error: --runtime-url only apply with --serve"),
        (["--serve", "--runtime-url", "http://x"], "error: --runtime-url needs --base-system"),
        (["--serve", "--system", "x.json"], "error: --system does not apply with --serve"),
        (["--serve", "--namespace", "ns"], "error: --namespace and --label apply to Kubernetes only"),
        ([], "error: --system PATH is required (or --serve to run the control loop)"),
    ],
)
def test_serve_options_are_checked(capsys, args, message):
    assert main(["plan", "capacity", *args]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_shoal_plan_capacity_serve_answers_optimize(small_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "shoal", "plan", "capacity", "--serve", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        response = httpx.post(f"http://127.0.0.1:{port}/optimize", content=(small_dir / "system-data.json").read_bytes(), timeout=30)
        assert response.json()["total_cost"] == pytest.approx(43_819)
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert "shoal capacity loop on http://127.0.0.1:" in output and "POST /optimize only" in output


def test_a_failed_replica_read_changes_nothing_and_keeps_the_pending_scale_down(tmp_path):
    """One failed read of the runtime's replica counts (a 503 while it loads, say) fails that
    cycle's collect stage: it used to read as 'count unknown' and apply the planner's count at
    once, past the scale-down delay and the step bounds."""
    import asyncio

    document = {
        "system": {"accelerators": [{"name": "cpu-worker", "type": "cpu", "cost_cents_per_hour": 1}],
                   "capacity": {"cpu": 1000},
                   "models": [{"name": "fixture.rf-32", "accelerator": "cpu-worker", "batch_latency_ms": {1: 2000}}],
                   "service_classes": [{"name": "default", "priority": 1, "targets": [{"model": "fixture.rf-32", "latency_ms": 5000}]}],
                   "servers": [{"name": "rf32", "service_class": "default", "model": "fixture.rf-32", "arrival_rate_rps": 0}]},
        "variants": {"fixture.rf-32": {"server": "rf32"}},
        "hysteresis": {"scale_down_delay_s": 300},
    }
    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump(document))
    replicas, posts, failing = {"fixture.rf-32": 4}, [], {"read": False}

    def runtime_answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/metrics":
            return httpx.Response(200, text="")
        if request.url.path == "/v2/repository/replicas":
            return httpx.Response(503, json={"error": "busy"}) if failing["read"] else httpx.Response(200, json=replicas)
        if request.method == "POST" and request.url.path.endswith("/replicas"):
            posts.append(json.loads(request.content)["replicas"])
            return httpx.Response(200, json={"replicas": posts[-1]})
        return httpx.Response(404)

    async def scenario():
        client = httpx.AsyncClient(transport=httpx.MockTransport(runtime_answer))
        now = [0.0]
        loop = CapacityLoop(spec=load_control_file(path), runtime_url="http://runtime", client=client, clock=lambda: now[0],
                            actuator=RuntimeReplicaActuator("http://runtime", client=client))  # fmt: skip
        await loop.take_baseline()
        reports = []
        for failed_read in (False, True, False):
            now[0] += 10.0
            failing["read"] = failed_read
            reports.append(await loop.cycle())
        return reports

    first, failed, third = asyncio.run(scenario())
    assert first["ok"] and "waits" in first["decided"][0]["reason"]  # idle: a scale-down, delayed
    assert not failed["ok"] and failed["stage"] == "collect" and "replicas" in failed["error"]
    assert third["ok"] and "waits" in third["decided"][0]["reason"] and posts == []


def test_a_binary_control_file_is_named_not_a_traceback(tmp_path):
    path = tmp_path / "control.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(InvalidInputError, match="--base-system .*: is not UTF-8 text"):
        load_control_file(path)
