"""Where the capacity loop's replica targets go: the runtime's workers, or Kubernetes.

One small interface, `ReplicaActuator`: `current_replicas` (what runs now, per planner server;
None where it is never known; CollectError when the backend could not be read, so that the
cycle changes nothing) and `apply` (move servers to their targets; every change gets a result,
never an exception). Two implementations:

- `RuntimeReplicaActuator`: shoal's own runtime through its replica extension
  (`GET /v2/repository/replicas`, `POST /v2/repository/models/<family>.<variant>/replicas`).
  The runtime caps a count at its number of worker processes; the result says so.
- `KubernetesActuator`: one Deployment per server, found by the label `<label>=<server>`
  (default `shoal.ai/server`); the change is the patch `{"spec": {"replicas": n}}` (the
  client sends an object body as a strategic merge patch, which for this body is a plain
  merge).
  With `emit_dir` each patch is written to `<dir>/<server>.json` (plus `index.json` with the
  selectors and a `kubectl scale` line per server); with a kubeconfig it is applied through
  the `kubernetes` client's `AppsV1Api.patch_namespaced_deployment` (imported only then).

A Ray backend (issue 9) will be a third implementation of the same interface.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from shoal.core.errors import InvalidInputError
from shoal.planner.capacity_control import ServerBinding
from shoal.runtime.capacity_inputs import CollectError

__all__ = [
    "ActuationResult",
    "KubernetesActuator",
    "ReplicaActuator",
    "ReplicaChange",
    "RuntimeReplicaActuator",
    "load_apps_api",
    "replica_patch",
]

DEFAULT_LABEL_KEY = "shoal.ai/server"


@dataclass(frozen=True)
class ReplicaChange:
    server: str
    variant: str
    replicas: int


@dataclass(frozen=True)
class ActuationResult:
    """`status`: applied (reached the target), capped (the backend reached fewer), written
    (patch file only), failed (`detail` says why)."""

    server: str
    target: int
    reached: int | None
    status: Literal["applied", "capped", "written", "failed"]
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class ReplicaActuator(Protocol):
    """What the loop needs from a backend. Both methods are called once per cycle, collect
    first. A backend that cannot be read raises CollectError from `current_replicas` (the cycle
    reports it and changes nothing: a count read as unknown would skip every delay and step
    bound); `apply` never raises (`failed` results instead)."""

    name: str

    async def current_replicas(self, bindings: Sequence[ServerBinding]) -> dict[str, int | None]:
        """Replica count per bound server now; None where no count exists to read (a variant
        the runtime does not know, patches only written to files)."""
        ...

    async def apply(self, changes: Sequence[ReplicaChange]) -> list[ActuationResult]:
        """Move each server to its count; one result per change, in order."""
        ...


# --------------------------------------------------------------------------------------------
# shoal's runtime
# --------------------------------------------------------------------------------------------


class RuntimeReplicaActuator:
    name = "runtime"

    def __init__(self, runtime_url: str, *, admin_token: str | None = None, client: httpx.AsyncClient | None = None,
                 load_timeout_s: float = 120.0):
        self.runtime_url = runtime_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._client = client or httpx.AsyncClient()
        self._load_timeout_s = load_timeout_s

    async def current_replicas(self, bindings: Sequence[ServerBinding]) -> dict[str, int | None]:
        url = f"{self.runtime_url}/v2/repository/replicas"
        try:
            response = await self._client.get(url, timeout=10.0)
            response.raise_for_status()
            counts = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise CollectError(f"GET {url} failed: {error!r}") from None
        if not isinstance(counts, dict):
            raise CollectError(f"GET {url} answered {type(counts).__name__}, not an object of replica counts")
        found = {binding.server: counts.get(binding.variant) for binding in bindings}
        for server, count in found.items():
            if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
                raise CollectError(f"GET {url} answered {count!r} replicas for server {server!r}, not a count")
        return found

    async def apply(self, changes: Sequence[ReplicaChange]) -> list[ActuationResult]:
        return [await self._apply_one(change) for change in changes]  # one at a time: loads compete for CPU

    async def _apply_one(self, change: ReplicaChange) -> ActuationResult:
        url = f"{self.runtime_url}/v2/repository/models/{change.variant}/replicas"
        try:
            response = await self._client.post(url, json={"replicas": change.replicas}, headers=self._headers,
                                               timeout=self._load_timeout_s)
        except httpx.HTTPError as error:
            return ActuationResult(change.server, change.replicas, None, "failed", f"POST {url}: {error!r}")
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            return ActuationResult(change.server, change.replicas, None, "failed",
                                   f"POST {url}: HTTP {response.status_code}: {message}")
        try:  # a proxy in between may answer 200 with a page of its own
            reached = response.json()["replicas"]
        except (ValueError, TypeError, KeyError):
            reached = None
        if not isinstance(reached, int) or isinstance(reached, bool):
            return ActuationResult(change.server, change.replicas, None, "failed",
                                   f"POST {url}: HTTP 200 without a replica count: {response.text[:200]!r}")
        if reached < change.replicas:
            return ActuationResult(change.server, change.replicas, reached, "capped",
                                   f"the runtime reached {reached}: it has no more worker processes")
        return ActuationResult(change.server, change.replicas, reached, "applied")


# --------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------


def replica_patch(replicas: int) -> dict[str, Any]:
    """The merge patch that scales a Deployment."""
    return {"spec": {"replicas": int(replicas)}}


def load_apps_api(kubeconfig: Path) -> Any:
    """`kubernetes.client.AppsV1Api` for a kubeconfig file (the package is imported here only)."""
    if not Path(kubeconfig).is_file():
        raise InvalidInputError(f"--kubeconfig {kubeconfig}: no such file")
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise InvalidInputError(
            "--kubeconfig needs the kubernetes package, which is not installed: pip install kubernetes "
            "(or leave out --kubeconfig and use --emit-patches DIR)"
        ) from None
    try:
        return client.AppsV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    except (ConfigException, ValueError, TypeError, KeyError) as error:
        raise InvalidInputError(f"--kubeconfig {kubeconfig}: not a usable kubeconfig ({error})") from None


def _file_name(server: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", server) + ".json"


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


class KubernetesActuator:
    """Scales the Deployment labelled `<label_key>=<server>` in `namespace`.

    `apps_api` is an `AppsV1Api` (or anything with its `list_namespaced_deployment` and
    `patch_namespaced_deployment`); without it patches are only written to `emit_dir`, and
    the current count is the one last written (unknown before the first).
    """

    name = "kubernetes"

    def __init__(self, *, namespace: str = "default", label_key: str = DEFAULT_LABEL_KEY,
                 emit_dir: Path | None = None, apps_api: Any = None):
        if emit_dir is None and apps_api is None:
            raise InvalidInputError("the Kubernetes actuator needs --emit-patches DIR, --kubeconfig PATH, or both")
        if not label_key or "=" in label_key:
            raise InvalidInputError(f"--label {label_key!r}: give a label key such as {DEFAULT_LABEL_KEY} (no '=')")
        self.namespace = namespace
        self.label_key = label_key
        self.emit_dir = Path(emit_dir) if emit_dir is not None else None
        self.apps_api = apps_api
        self._written: dict[str, int] = {}
        if self.emit_dir is not None:
            try:
                self.emit_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InvalidInputError(f"--emit-patches {emit_dir}: cannot create the folder ({error.strerror})") from None

    def selector(self, server: str) -> str:
        return f"{self.label_key}={server}"

    def _deployments(self, server: str) -> list[Any]:
        return list(self.apps_api.list_namespaced_deployment(self.namespace, label_selector=self.selector(server)).items)

    def _current_one(self, server: str) -> int | None:
        try:
            found = self._deployments(server)
        except Exception as error:  # the client raises ApiException, urllib3 errors, ...
            raise CollectError(f"listing the deployments of {server!r} failed: {error!r}") from None
        if len(found) != 1:
            return None
        return int(found[0].spec.replicas or 0)

    async def current_replicas(self, bindings: Sequence[ServerBinding]) -> dict[str, int | None]:
        if self.apps_api is None:
            return {binding.server: self._written.get(binding.server) for binding in bindings}
        counts = await asyncio.gather(*(asyncio.to_thread(self._current_one, b.server) for b in bindings))
        return {binding.server: count for binding, count in zip(bindings, counts)}

    def _patch_one(self, change: ReplicaChange) -> ActuationResult:
        try:
            found = self._deployments(change.server)
        except Exception as error:
            return ActuationResult(change.server, change.replicas, None, "failed", f"listing deployments failed: {error!r}")
        if len(found) != 1:
            names = ", ".join(d.metadata.name for d in found) or "none"
            return ActuationResult(
                change.server, change.replicas, None, "failed",
                f"label {self.selector(change.server)} selects {len(found)} deployments in {self.namespace!r} "
                f"({names}); label exactly one",
            )
        name = found[0].metadata.name
        try:
            self.apps_api.patch_namespaced_deployment(name, self.namespace, replica_patch(change.replicas))
        except Exception as error:
            return ActuationResult(change.server, change.replicas, None, "failed", f"patching deployment {name!r} failed: {error!r}")
        return ActuationResult(change.server, change.replicas, change.replicas, "applied", f"deployment {self.namespace}/{name}")

    def _emit(self, changes: Sequence[ReplicaChange]) -> None:
        assert self.emit_dir is not None
        for change in changes:
            _write_json(self.emit_dir / _file_name(change.server), replica_patch(change.replicas))
            self._written[change.server] = change.replicas
        index = {
            "namespace": self.namespace,
            "label_key": self.label_key,
            "patches": [
                {
                    "server": server,
                    "selector": self.selector(server),
                    "replicas": replicas,
                    "file": _file_name(server),
                    "command": f"kubectl scale deployment -n {self.namespace} -l {self.selector(server)} --replicas={replicas}",
                }
                for server, replicas in sorted(self._written.items())
            ],
        }
        _write_json(self.emit_dir / "index.json", index)

    async def apply(self, changes: Sequence[ReplicaChange]) -> list[ActuationResult]:
        if self.emit_dir is not None:
            try:
                self._emit(changes)
            except OSError as error:
                return [ActuationResult(c.server, c.replicas, None, "failed", f"writing patches failed: {error}") for c in changes]
        if self.apps_api is None:
            return [ActuationResult(c.server, c.replicas, None, "written",
                                    str(self.emit_dir / _file_name(c.server))) for c in changes]
        return list(await asyncio.gather(*(asyncio.to_thread(self._patch_one, change) for change in changes)))
