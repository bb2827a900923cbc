"""A `shoal serve` subprocess for experiments and the demo: started on a free port, stopped cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "child_pids", "free_port", "scrape_metric", "start_server_process", "wait_until_ready"]


def child_pids(parent_pid: int, *, worker_processes_only: bool = False) -> list[int]:
    """Processes whose parent is `parent_pid`, from /proc; with `worker_processes_only`, only the
    multiprocessing children (shoal's workers), not its resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != parent_pid:
            continue
        if worker_processes_only and (b"multiprocessing" not in cmdline or b"resource_tracker" in cmdline):
            continue
        found.append(int(entry.name))
    return found


def scrape_metric(url: str, sample: str, **labels: str) -> float:
    """One sample of a server's Prometheus /metrics (e.g. `shoal_controller_ticks_total`), the one
    whose labels include `labels`; 0 when the server has not exported it yet."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(key) == value for key, value in labels.items()):
                return float(found.value)
    return 0.0


def free_port() -> int:
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


def start_server_process(
    repository: Path, *extra: str, timeout_s: float = 120.0, log_path: Path | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `shoal serve` on a free port and wait until it reports ready (its output goes to
    `log_path`, or nowhere; `env` replaces the environment, e.g. to serve another source tree)."""
    port = free_port()
    log = open(log_path or os.devnull, "w")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal", "serve", "--repo", str(repository), "--http-port", str(port), "--grpc-port", "0", *extra],
        stdout=log,
        stderr=log,
        env=env,
    )
    server = ServerProcess(process, f"http://127.0.0.1:{port}")
    state = wait_until_ready(process, server.url, timeout_s)
    if state == "exited":
        raise RuntimeError(f"shoal serve exited with status {process.returncode} before it was ready")
    if state == "timeout":
        server.stop()
        raise RuntimeError(f"shoal serve was not ready after {timeout_s:.0f} s")
    return server


def wait_until_ready(process: subprocess.Popen, url: str, timeout_s: float) -> str:
    """Poll /v2/health/ready until it answers 200: "ready", "exited" (the process died) or "timeout"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return "exited"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return "ready"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return "timeout"
