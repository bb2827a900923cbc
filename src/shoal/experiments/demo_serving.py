"""The serving part of `shoal demo`: a real server, real requests, policy vs static baselines.

A `shoal serve` subprocess serves the demo family; closed-loop clients send the family's
held-out validation frames (full 128 px, uint8, Triton binary tensors) to the model-less family
endpoint under an SLO, and the same load to static single-variant endpoints. Accuracy is
measured against the labels of the frames actually answered; a miss is a request that was
shed, dropped or answered after its SLO.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

__all__ = ["RunSummary", "ServerProcess", "run_closed_loop", "start_server_process"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server_process(repository: Path, *extra: str, timeout_s: float = 120.0) -> ServerProcess:
    """Start `shoal serve` on a free port and wait until it reports ready."""
    port = _free_port()
    log = open(os.devnull, "w")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal", "serve", "--repo", str(repository), "--http-port", str(port), "--grpc-port", "0", *extra],
        stdout=log,
        stderr=log,
    )
    server = ServerProcess(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"shoal serve exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"shoal serve was not ready after {timeout_s:.0f} s")


@dataclass
class RunSummary:
    name: str
    model: str
    slo_ms: float
    sent: int = 0
    answered: int = 0
    correct: int = 0
    late: int = 0
    shed: int = 0
    dropped: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    variants: dict[str, int] = field(default_factory=dict)

    @property
    def miss_rate(self) -> float:
        return (self.late + self.shed + self.dropped + self.errors) / max(1, self.sent)

    @property
    def accuracy(self) -> float:
        """Accuracy over the frames answered (what users of the answers see)."""
        return self.correct / max(1, self.answered)

    def percentile_ms(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "slo_ms": self.slo_ms,
            "sent": self.sent,
            "answered": self.answered,
            "accuracy": round(self.accuracy, 4),
            "miss_rate": round(self.miss_rate, 4),
            "p50_ms": None if not self.latencies_ms else round(self.percentile_ms(50), 2),
            "p99_ms": None if not self.latencies_ms else round(self.percentile_ms(99), 2),
            "shed": self.shed,
            "dropped": self.dropped,
            "late": self.late,
            "errors": self.errors,
            "variants": dict(sorted(self.variants.items())),
        }


def _binary_request(frame: np.ndarray, slo_ms: float) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [{"name": "images", "shape": [1, *frame.shape], "datatype": "UINT8", "parameters": {"binary_data_size": frame.nbytes}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
            "parameters": {"slo_ms": slo_ms},
        }
    ).encode()
    return header + frame.tobytes(), {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


async def run_closed_loop(
    url: str,
    summary: RunSummary,
    frames: np.ndarray,
    labels: np.ndarray,
    *,
    duration_s: float,
    concurrency: int,
    on_answer: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """`concurrency` clients each send the next frame as soon as the previous one is answered."""
    stop_at = time.monotonic() + duration_s
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:

        async def one_client() -> None:
            while time.monotonic() < stop_at:
                index = next(counter) % len(frames)
                body, headers = _binary_request(frames[index], summary.slo_ms)
                summary.sent += 1
                started = time.perf_counter()
                try:
                    response = await client.post(f"/v2/models/{summary.model}/infer", content=body, headers=headers)
                except httpx.HTTPError:
                    summary.errors += 1
                    continue
                latency_ms = (time.perf_counter() - started) * 1000.0
                if response.status_code == 429:
                    summary.shed += 1
                    await asyncio.sleep(0.005)
                    continue
                if response.status_code == 504:
                    summary.dropped += 1
                    continue
                if response.status_code != 200:
                    summary.errors += 1
                    continue
                answer = response.json()
                logits = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
                summary.answered += 1
                summary.latencies_ms.append(latency_ms)
                summary.correct += int(int(np.argmax(logits)) == int(labels[index]))
                variant = answer.get("parameters", {}).get("shoal_variant", summary.model)
                summary.variants[variant] = summary.variants.get(variant, 0) + 1
                if latency_ms > summary.slo_ms:
                    summary.late += 1
                if on_answer:
                    on_answer(summary)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return summary
