"""Kubernetes actuation: patch files, a fake AppsV1Api, and the real client against a fake API server."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shoal.core.errors import InvalidInputError
from shoal.planner.capacity_control import ServerBinding
from shoal.runtime.capacity_actuators import KubernetesActuator, ReplicaChange, load_apps_api, replica_patch

from .conftest import free_port  # noqa: TID252

BINDINGS = (ServerBinding("fixture.rf-16", "rf16"), ServerBinding("fixture.rf-32", "rf32"))


def test_patch_files_have_the_deployment_patch_shape(tmp_path):
    actuator = KubernetesActuator(namespace="serving", emit_dir=tmp_path / "patches")
    assert asyncio.run(actuator.current_replicas(BINDINGS)) == {"rf16": None, "rf32": None}
    results = asyncio.run(actuator.apply([ReplicaChange("rf32", "fixture.rf-32", 3), ReplicaChange("rf16", "fixture.rf-16", 1)]))
    assert [(r.server, r.status, r.reached) for r in results] == [("rf32", "written", None), ("rf16", "written", None)]
    assert json.loads((tmp_path / "patches" / "rf32.json").read_text()) == {"spec": {"replicas": 3}}
    index = json.loads((tmp_path / "patches" / "index.json").read_text())
    assert index["namespace"] == "serving" and index["label_key"] == "shoal.ai/server"
    assert index["patches"][1] == {
        "server": "rf32", "selector": "shoal.ai/server=rf32", "replicas": 3, "file": "rf32.json",
        "command": "kubectl scale deployment -n serving -l shoal.ai/server=rf32 --replicas=3",
    }
    # Without a cluster the count last written is the current one.
    assert asyncio.run(actuator.current_replicas(BINDINGS)) == {"rf16": 1, "rf32": 3}


def test_actuator_options_are_checked():
    with pytest.raises(InvalidInputError, match="needs --emit-patches DIR, --kubeconfig PATH, or both"):
        KubernetesActuator()
    with pytest.raises(InvalidInputError, match="--label 'a=b': give a label key"):
        KubernetesActuator(label_key="a=b", apps_api=object())


class FakeAppsApi:
    """The two AppsV1Api methods the actuator uses, over an in-memory list of deployments."""

    def __init__(self, deployments: dict[str, tuple[str, int]]):  # name -> (server label, replicas)
        self.deployments = deployments
        self.patches: list[tuple[str, str, dict]] = []

    def list_namespaced_deployment(self, namespace, label_selector):
        key, value = label_selector.split("=")
        assert key == "shoal.ai/server"
        items = [
            SimpleNamespace(metadata=SimpleNamespace(name=name), spec=SimpleNamespace(replicas=replicas))
            for name, (server, replicas) in sorted(self.deployments.items()) if server == value
        ]
        return SimpleNamespace(items=items)

    def patch_namespaced_deployment(self, name, namespace, body):
        self.patches.append((name, namespace, body))
        server, _ = self.deployments[name]
        self.deployments[name] = (server, body["spec"]["replicas"])


def test_patches_are_applied_to_the_one_labelled_deployment():
    api = FakeAppsApi({"vision-16": ("rf16", 2), "vision-32-a": ("rf32", 1), "vision-32-b": ("rf32", 1)})
    actuator = KubernetesActuator(namespace="serving", apps_api=api)
    assert asyncio.run(actuator.current_replicas(BINDINGS)) == {"rf16": 2, "rf32": None}
    results = asyncio.run(actuator.apply([ReplicaChange("rf16", "fixture.rf-16", 4), ReplicaChange("rf32", "fixture.rf-32", 2)]))
    assert (results[0].status, results[0].reached, results[0].detail) == ("applied", 4, "deployment serving/vision-16")
    assert results[1].status == "failed"
    assert results[1].detail == (
        "label shoal.ai/server=rf32 selects 2 deployments in 'serving' (vision-32-a, vision-32-b); label exactly one"
    )
    assert api.patches == [("vision-16", "serving", {"spec": {"replicas": 4}})]


def test_kubeconfig_errors_are_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(InvalidInputError, match="--kubeconfig .*missing: no such file"):
        load_apps_api(tmp_path / "missing")
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\n")
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "kubernetes", None)  # as if it were not installed
        with pytest.raises(InvalidInputError, match="needs the kubernetes package, which is not installed: pip install kubernetes"):
            load_apps_api(broken)
    pytest.importorskip("kubernetes")
    with pytest.raises(InvalidInputError, match="not a usable kubeconfig"):
        load_apps_api(broken)


# --------------------------------------------------------------------------------------------
# the real kubernetes client against a fake API server
# --------------------------------------------------------------------------------------------


def _deployment(name: str, server: str, replicas: int) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "serving", "labels": {"shoal.ai/server": server}},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "shoal", "image": "shoal"}]}},
        },
    }


@pytest.fixture()
def fake_api_server(tmp_path):
    state = {"rf32": _deployment("vision-32", "rf32", 1)}
    seen: list[tuple[str, str, dict]] = []

    async def deployments(request: Request):
        _, _, server = request.query_params.get("labelSelector", "").partition("=")
        items = [d for key, d in state.items() if key == server]
        return JSONResponse({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": items})

    async def patch(request: Request):
        body = await request.json()
        seen.append((request.path_params["name"], request.headers["content-type"], body))
        deployment = next(d for d in state.values() if d["metadata"]["name"] == request.path_params["name"])
        deployment["spec"]["replicas"] = body["spec"]["replicas"]
        return JSONResponse(deployment)

    app = Starlette(routes=[
        Route("/apis/apps/v1/namespaces/serving/deployments", deployments, methods=["GET"]),
        Route("/apis/apps/v1/namespaces/serving/deployments/{name}", patch, methods=["PATCH"]),
    ])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: ci, user: {token: t0k3n}}]\n"
        "contexts: [{name: ci, context: {cluster: fake, user: ci}}]\n"
        "current-context: ci\n"
    )
    yield kubeconfig, state, seen
    server.should_exit = True
    thread.join(timeout=10)


def test_the_kubernetes_client_patches_the_labelled_deployment(fake_api_server, tmp_path):
    pytest.importorskip("kubernetes")
    kubeconfig, state, seen = fake_api_server
    actuator = KubernetesActuator(namespace="serving", apps_api=load_apps_api(kubeconfig), emit_dir=tmp_path / "out")
    assert asyncio.run(actuator.current_replicas(BINDINGS)) == {"rf16": None, "rf32": 1}
    results = asyncio.run(actuator.apply([ReplicaChange("rf32", "fixture.rf-32", 3), ReplicaChange("rf16", "fixture.rf-16", 2)]))
    assert (results[0].status, results[0].reached) == ("applied", 3)
    assert results[1].status == "failed" and "selects 0 deployments" in results[1].detail
    assert [(name, body) for name, _, body in seen] == [("vision-32", replica_patch(3))]
    assert seen[0][1].endswith("merge-patch+json")
    assert state["rf32"]["spec"]["replicas"] == 3
    assert json.loads((tmp_path / "out" / "rf16.json").read_text()) == {"spec": {"replicas": 2}}


def test_the_runtime_actuator_reports_a_reply_without_a_count_as_failed_and_goes_on():
    """A proxy's 200 page, or counts that are not integers, are a failed change or a collect
    error naming the server, never an exception out of `apply` (which promises one result per change)."""
    import httpx

    from shoal.runtime.capacity_actuators import RuntimeReplicaActuator
    from shoal.runtime.capacity_inputs import CollectError

    def handler(request):
        if request.method == "GET":
            return httpx.Response(200, json={"fixture.rf-16": "2", "fixture.rf-32": 1})
        if "rf-16" in request.url.path:
            return httpx.Response(200, text="OK")
        return httpx.Response(200, json={"model": "fixture.rf-32", "replicas": 3})

    async def scenario():
        actuator = RuntimeReplicaActuator("http://runtime", client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        with pytest.raises(CollectError, match="'2' replicas for server 'rf16'"):
            await actuator.current_replicas(BINDINGS)
        return await actuator.apply([ReplicaChange("rf16", "fixture.rf-16", 2), ReplicaChange("rf32", "fixture.rf-32", 3)])

    first, second = asyncio.run(scenario())
    assert (first.status, first.reached) == ("failed", None) and "without a replica count" in first.detail
    assert (second.status, second.reached) == ("applied", 3)
