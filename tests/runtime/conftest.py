"""A real `shoal serve` process on the fixture family, started once for the runtime tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.experiments.server_process import child_pids, free_port, wait_until_ready


@dataclass
class RunningServer:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    repository: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def worker_pids(self) -> list[int]:
        """Child processes of the server that are shoal workers (read from /proc)."""
        return child_pids(self.process.pid, worker_processes_only=True)


def start_server(repository: Path, *extra: str, timeout_s: float = 60.0) -> RunningServer:
    http_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal", "serve", "--repo", str(repository), "--http-port", str(http_port), "--grpc-port", str(grpc_port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server = RunningServer(process, http_port, grpc_port, repository)
    state = wait_until_ready(process, server.url, timeout_s)
    if state == "exited":
        raise RuntimeError(f"server exited early:\n{process.stdout.read()}")
    if state == "timeout":
        process.kill()
        raise RuntimeError("server did not become ready in time")
    return server


def stop_server(server: RunningServer) -> str:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
    return server.process.stdout.read()


@pytest.fixture(scope="session")
def server(fixture_repository_path):
    running = start_server(fixture_repository_path, "--max-body-mb", "1", "--queue-capacity", "64")
    yield running
    stop_server(running)
