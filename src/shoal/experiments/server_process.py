"""A `shoal serve` subprocess for experiments and the demo: started on a free port, stopped cleanly."""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from shoal.core.errors import ProcessFailedError

__all__ = ["READY_LINE", "ServerProcess", "child_pids", "free_port", "scrape_metric", "start_server_process", "wait_for_ready_line", "wait_until_ready"]


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
    """A port nothing listens on now, taken below the kernel's ephemeral range where it can.

    Outgoing connections take their local ports from the ephemeral range, so a port found there
    (as binding port 0 finds one) can be taken by any client between this call and the server's
    bind: a CI run lost a test to that. Below the range only another listener can take it.
    """
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    candidates = range(max(1024, ephemeral_low - 16384), ephemeral_low)
    for _ in range(64 if len(candidates) >= 1024 else 0):
        port = random.choice(candidates)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


READY_LINE = re.compile(r"^shoal serving [^\n]*: HTTP on http://(?:\[[^\]]*\]|[^\s:/]+):(\d+)(?:, gRPC on (?:\[[^\]]*\]|[^\s:]+):(\d+))?\n", re.M)
"""The line `shoal serve` prints on stderr once it serves; it names the ports it listens on."""


def wait_for_ready_line(process: subprocess.Popen, log_path: Path, timeout_s: float) -> tuple[int, int | None] | str:
    """Poll `log_path` (where the server's stderr goes) for its ready line: the HTTP port and the
    gRPC port (None without gRPC) it names, or "exited" (the process died) or "timeout"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = READY_LINE.search(log_path.read_text(errors="replace")) if log_path.exists() else None
        if found:
            return int(found.group(1)), int(found.group(2)) if found.group(2) else None
        if process.poll() is not None:
            return "exited"
        time.sleep(0.1)
    return "timeout"


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    scratch: tempfile.TemporaryDirectory | None = None
    """Holds the server's output when the caller asked for no log (removed at `stop`)."""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.scratch is not None:
            self.scratch.cleanup()


def start_server_process(
    repository: Path, *extra: str, timeout_s: float = 120.0, log_path: Path | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `shoal serve` on a port the system picks and wait until it reports ready (its output
    goes to `log_path`, or to a scratch file removed when it stops; `env` replaces the
    environment, e.g. to serve another source tree)."""
    # The output goes to a file either way: the ready line in it names the port.
    scratch = None if log_path else tempfile.TemporaryDirectory(prefix="shoal-serve-")
    output_path = log_path or Path(scratch.name) / "server.log"
    # A source tree from before `--http-port 0` (an A/B benchmark's baseline) refuses it at
    # once: it gets a free port instead.
    for http_port in ("0", str(free_port())):
        with open(output_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "shoal", "serve", "--repo", str(repository), "--http-port", http_port, "--grpc-port", "0", *extra],
                stdout=log,
                stderr=log,
                env=env,
            )
        server = ServerProcess(process, "", scratch)
        try:
            ready = wait_for_ready_line(process, output_path, timeout_s)
        except BaseException:  # Ctrl-C or SIGTERM (as KeyboardInterrupt) while it starts: not left behind
            server.stop()
            raise
        if not (ready == "exited" and http_port == "0" and "'--http-port'" in output_path.read_text(errors="replace")):
            break
    if isinstance(ready, str):
        last_output = output_path.read_text(errors="replace")[-2000:]
        server.stop()
        if ready == "exited":
            raise ProcessFailedError(f"shoal serve exited with status {process.returncode} before it was ready:\n{last_output}")
        raise ProcessFailedError(f"shoal serve was not ready after {timeout_s:.0f} s:\n{last_output}")
    server.url = f"http://127.0.0.1:{ready[0]}"
    try:
        healthy = wait_until_ready(process, server.url, timeout_s) == "ready"
    except BaseException:
        server.stop()
        raise
    if not healthy:
        server.stop()
        raise ProcessFailedError(f"shoal serve printed its ready line but {server.url}/v2/health/ready did not answer 200 within {timeout_s:.0f} s")
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
