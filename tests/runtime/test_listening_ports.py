"""The ports `shoal serve` listens on: taken before the workers start, never shared, 0 for any."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shoal.experiments.server_process import READY_LINE, free_port, start_server_process


def _serve(repository: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    finished = subprocess.run([sys.executable, "-m", "shoal", "serve", "--repo", str(repository), *args], capture_output=True, text=True, timeout=120)
    return finished, time.monotonic() - started


def _held_port(*, reuse_port: bool = False) -> socket.socket:
    holder = socket.socket()
    if reuse_port:  # as a gRPC server holds its port: the kind of holder a second gRPC server could join
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def test_an_http_port_in_use_is_one_error_line_naming_the_option(fixture_repository_path):
    with _held_port() as holder:
        port = holder.getsockname()[1]
        finished, took_s = _serve(fixture_repository_path, "--http-port", str(port), "--grpc-port", "0", "--preload", "fixture.rf-16")
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.strip().splitlines()[-1].startswith(f"error: --http-port {port}: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in finished.stderr
    # Refused before the preloaded variant's worker started (that alone takes seconds here).
    assert took_s < 20


def test_a_second_server_cannot_share_a_grpc_port(fixture_repository_path):
    # gRPC's default SO_REUSEPORT let a second server join the port a running one held, and the
    # kernel then split the clients between the two.
    with _held_port(reuse_port=True) as holder:
        port = holder.getsockname()[1]
        finished, _ = _serve(fixture_repository_path, "--http-port", "0", "--grpc-port", str(port))
    assert finished.returncode == 2, finished.stderr
    assert f"error: --grpc-port {port}: cannot listen on 127.0.0.1:{port}" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_host_that_is_not_this_machine_is_named(fixture_repository_path):
    finished, _ = _serve(fixture_repository_path, "--host", "no-such-host.invalid", "--http-port", "0", "--grpc-port", "0")
    assert finished.returncode == 2
    assert finished.stderr.startswith("error: --host 'no-such-host.invalid'")


def test_http_port_0_serves_on_the_port_the_ready_line_names(fixture_repository_path, tmp_path):
    server = start_server_process(fixture_repository_path, log_path=tmp_path / "server.log")
    try:
        found = READY_LINE.search((tmp_path / "server.log").read_text())
        assert found and int(found.group(1)) > 0 and found.group(2) is None  # --grpc-port 0: no gRPC
        assert server.url.endswith(f":{found.group(1)}")
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
    finally:
        server.stop()


def test_free_ports_come_from_below_the_ephemeral_range():
    # Outgoing connections take ports from the ephemeral range; a port chosen there could be
    # taken between choosing it and the server binding it.
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < ephemeral_low for port in ports)
    assert len(ports) > 1
