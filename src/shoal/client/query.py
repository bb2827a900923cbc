"""The Python SDK of model-less queries: name a family and requirements, get an answer or the reason.

    client = QueryClient("http://127.0.0.1:8000")
    answer = client.infer("demo", images, slo_ms=50, min_accuracy=0.8, max_cost_per_1000_usd=0.001)
    answer.outputs, answer.variant          # logits, and the variant shoal chose
    # RequirementsUnmet.alternatives: what relaxing each requirement would give (HTTP 422)
    # Overloaded.retry_after_s: the requirements are fine, the load is not (HTTP 429)

Requests use KServe v2 over HTTP with Triton's binary tensor extension (the tensor travels
as raw bytes after a JSON header), so any KServe v2 server works with `infer` for exact models.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

__all__ = ["Overloaded", "QueryAnswer", "QueryClient", "QueryFailed", "RequirementsUnmet"]

_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8"}
MAX_OVERHEAD_SHARE = 0.5
"""The most of a query's SLO the client keeps for its own measured overhead."""


class QueryFailed(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class RequirementsUnmet(QueryFailed):
    """No variant can meet the requirements; `alternatives` say what relaxing each would give."""

    def __init__(self, status: int, message: str, alternatives: list[dict]):
        super().__init__(status, message)
        self.alternatives = alternatives


class Overloaded(QueryFailed):
    def __init__(self, status: int, message: str, retry_after_s: float):
        super().__init__(status, message)
        self.retry_after_s = retry_after_s


@dataclass
class QueryAnswer:
    outputs: np.ndarray
    variant: str | None
    parameters: dict = field(default_factory=dict)


class QueryClient:
    def __init__(self, url: str, *, timeout_s: float = 30.0, input_name: str = "images", subtract_overhead: bool = True):
        self.url = url.rstrip("/")
        self.input_name = input_name
        self.subtract_overhead = subtract_overhead
        self.overhead_ms = 0.0
        """Smoothed time outside the server (this client, the network): client latency minus the
        server's own `shoal_server_ms`. The SLO a query states is end to end, so the client sends
        the server only what is left of it after this overhead (as edge clients do)."""
        self.last_parameters: dict = {}
        self._http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "QueryClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def infer(
        self,
        model: str,
        images: np.ndarray,
        *,
        slo_ms: float | None = None,
        min_accuracy: float | None = None,
        max_cost_per_1000_usd: float | None = None,
        priority: int = 0,
    ) -> QueryAnswer:
        """`model` is a family (model-less) or `<family>.<variant>`; images are [batch, C, S, S]."""
        images = np.ascontiguousarray(images)
        if images.dtype not in _DATATYPES:
            raise ValueError(f"images must be float32 (scaled to [0, 1]) or uint8, got {images.dtype}")
        parameters: dict = {"priority": priority, "binary_data_output": True}
        if slo_ms is not None and not (isinstance(slo_ms, (int, float)) and math.isfinite(slo_ms) and slo_ms > 0):
            # Not left to the server: the overhead below would turn it into a 1 ms SLO, and the
            # answer into a 429 that invites a retry.
            raise ValueError(f"slo_ms must be a positive number of milliseconds, got {slo_ms!r}")
        if slo_ms is not None and self.subtract_overhead:
            # At most half the SLO: one slow first answer (a cold connection) once set a 1 ms SLO
            # for good, since only answered requests correct the estimate and none was answered.
            slo_ms = max(1.0, slo_ms - min(self.overhead_ms, MAX_OVERHEAD_SHARE * slo_ms))
        for name, value in (("slo_ms", slo_ms), ("min_accuracy", min_accuracy), ("max_cost_per_1000_usd", max_cost_per_1000_usd)):
            if value is not None:
                parameters[name] = value
        self.last_parameters = parameters
        raw = images.tobytes()
        header = json.dumps({
            "inputs": [{"name": self.input_name, "datatype": _DATATYPES[images.dtype], "shape": list(images.shape),
                        "parameters": {"binary_data_size": len(raw)}}],
            "parameters": parameters,
        }).encode()
        started = time.perf_counter()
        response = self._http.post(
            f"{self.url}/v2/models/{model}/infer", content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )
        if response.status_code != 200:
            self._raise(response)
        answer = self._decode(response)
        server_ms = answer.parameters.get("shoal_server_ms")
        if isinstance(server_ms, (int, float)):
            outside_ms = max(0.0, (time.perf_counter() - started) * 1000.0 - server_ms)
            self.overhead_ms = outside_ms if self.overhead_ms == 0.0 else self.overhead_ms + 0.2 * (outside_ms - self.overhead_ms)
        return answer

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text}
        message = body.get("error", response.text)
        if response.status_code == 422 and "alternatives" in body:
            raise RequirementsUnmet(response.status_code, message, body["alternatives"])
        if response.status_code == 429:
            raise Overloaded(response.status_code, message, float(response.headers.get("retry-after", 1)))
        raise QueryFailed(response.status_code, message)

    @staticmethod
    def _decode(response: httpx.Response) -> QueryAnswer:
        length = response.headers.get("inference-header-content-length")
        content = response.content
        header = json.loads(content[: int(length)] if length else content)
        (output,) = header["outputs"][:1]
        if "data" in output:
            values = np.asarray(output["data"], dtype=np.float32)
        else:
            start = int(length)
            values = np.frombuffer(content[start : start + output["parameters"]["binary_data_size"]], dtype=np.float32)
        parameters = header.get("parameters", {})
        return QueryAnswer(values.reshape(output["shape"]), parameters.get("shoal_variant"), parameters)
