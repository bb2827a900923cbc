"""The ports `shoal serve` listens on: taken before the workers start, never shared, 0 for any."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shoal.core.errors import InvalidInputError
from shoal.experiments.server_process import READY_LINE, free_port, start_server_process
from shoal.runtime.sockets import bind_http_socket


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


def test_a_port_is_held_from_the_moment_it_is_bound():
    # Bound but not listening, a second socket could bind the same port, and under uvloop the
    # listen that then failed raised nothing: the server announced a port another one held.
    first = bind_http_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(InvalidInputError, match=f"--http-port {port}: cannot listen"):
            bind_http_socket("127.0.0.1", port)
    finally:
        first.close()


@pytest.mark.parametrize(("host", "bound"), [("", "0.0.0.0"), ("localhost", "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_hosts_bind_as_uvicorn_bound_them(host, bound):
    listening = bind_http_socket(host, 0)
    try:
        assert listening.getsockname()[0] == bound
    finally:
        listening.close()


def test_one_port_for_http_and_grpc_is_refused_by_name(fixture_repository_path):
    port = free_port()
    finished, _ = _serve(fixture_repository_path, "--http-port", str(port), "--grpc-port", str(port))
    assert finished.returncode == 2
    assert f"error: --grpc-port {port}: cannot listen" in finished.stderr


def test_the_ready_line_is_read_whole_or_not_at_all():
    line = "shoal serving 3 variants, workflow 'odd: HTTP on http://x:1': HTTP on http://[::1]:41377, gRPC on [::1]:8001\n"
    assert READY_LINE.search(line).groups() == ("41377", "8001")
    assert READY_LINE.search(line[:-4]) is None  # a line half written: no port 413


def test_a_server_started_without_a_log_keeps_its_output_until_it_stops(fixture_repository_path):
    server = start_server_process(fixture_repository_path)
    try:
        scratch = Path(server.scratch.name)
        assert READY_LINE.search((scratch / "server.log").read_text())
    finally:
        server.stop()
    assert not scratch.exists()


def test_the_capacity_loop_takes_its_port_before_it_says_where_it_serves():
    with _held_port() as holder:
        port = holder.getsockname()[1]
        finished = subprocess.run([sys.executable, "-m", "shoal", "plan", "capacity", "--serve", "--port", str(port)],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
    assert finished.returncode == 2
    assert finished.stderr.startswith(f"error: --port {port}: cannot listen on 127.0.0.1:{port}"), finished.stderr


def test_the_capacity_loop_stops_on_ctrl_c_with_status_0_and_on_sigterm_with_143():
    import signal

    for sent, expected in ((signal.SIGINT, 0), (signal.SIGTERM, 143)):
        process = subprocess.Popen([sys.executable, "-m", "shoal", "plan", "capacity", "--serve", "--port", "0"],
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            line = process.stderr.readline()
            assert line.startswith("shoal capacity loop on http://127.0.0.1:"), line
            port = int(line.split("127.0.0.1:")[1].split(";")[0])
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            process.send_signal(sent)
            assert process.wait(timeout=30) == expected, sent
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
