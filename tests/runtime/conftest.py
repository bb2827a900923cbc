"""A real `shoal serve` process on the fixture family, started once for the runtime tests."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.core.errors import ProcessFailedError
from shoal.experiments.server_process import child_pids, free_port, start_server_process


@dataclass
class RunningServer:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    repository: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def worker_pids(self) -> list[int]:
        """Child processes of the server that are shoal workers (read from /proc)."""
        return child_pids(self.process.pid, worker_processes_only=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(repository: Path, *extra: str, timeout_s: float = 60.0) -> RunningServer:
    """`shoal serve` (through the benchmarks' `start_server_process`) with HTTP on a port it picks
    and gRPC on a free port; started again (up to 3 times) if that gRPC port was taken meanwhile
    or Ray's local node did not start in time. Its output stays in a file for `stop_server`."""
    for _ in range(3):
        grpc_port = free_port()
        descriptor, name = tempfile.mkstemp(prefix="shoal-serve-", suffix=".log")
        os.close(descriptor)
        log_path = Path(name)
        try:
            started = start_server_process(repository, "--grpc-port", str(grpc_port), *extra, timeout_s=timeout_s, log_path=log_path,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        except ProcessFailedError as error:
            output = str(error)
            log_path.unlink(missing_ok=True)
            if f"--grpc-port {grpc_port}: cannot listen" in output:
                continue
            # Ray's local node gives its raylet a fixed 30 s to register; on a loaded 2-core
            # machine it once did not (1 full-suite run of 5 here, every Ray test of the module
            # lost): a second start is the test's retry, not a result about shoal.
            if "node timed out during startup" in output:
                continue
            raise
        return RunningServer(started.process, int(started.url.rsplit(":", 1)[1]), grpc_port, repository, log_path)
    raise RuntimeError(f"three starts in a row failed on a taken gRPC port or a slow Ray node:\n{output}")


def stop_server(server: RunningServer) -> str:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    output = server.output()
    server.log_path.unlink(missing_ok=True)
    return output


@pytest.fixture(scope="session")
def server(fixture_repository_path):
    running = start_server(fixture_repository_path, "--max-body-mb", "1", "--queue-capacity", "64")
    yield running
    stop_server(running)
