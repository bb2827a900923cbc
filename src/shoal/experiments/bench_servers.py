"""The servers `shoal bench serve` measures, each in a session of its own, and the blocking
probes its sweep uses between points (ready to answer; idle again after a point).

A session per server, because Ray starts processes that leave the server's process tree: the
session still holds them, so their CPU is counted and they are stopped with the rest. (Not
`server_process.ServerProcess`, which starts `shoal serve` itself for the demo and experiments
and waits for its readiness endpoint: these are any of three systems, reached only by inference
requests, with their whole session's CPU measured.)
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from shoal.client.loadgen import LoadSpec, build_infer_body

__all__ = ["ServerUnderTest", "wait_idle", "wait_ready"]


def _process_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, session id, CPU ticks user + system) of every live process, from /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # Fields after "(comm)": state ppid pgrp session ... utime(11) stime(12) cutime(13)
        # cstime(14): the last two hold the children it has reaped (a worker that exited and
        # was waited for during a point), whose CPU would otherwise leave the sum with them.
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), sum(int(field) for field in fields[11:15]))
    return table


def _family_pids(root_pid: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """The root's session plus all its descendants: Ray starts some workers in sessions of their
    own, and a process whose parent died leaves the tree but stays in the session."""
    family = {pid for pid, (_, session, _) in table.items() if session == root_pid}
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        if pid in table:
            family.add(pid)
        stack.extend(child for child in children.get(pid, []) if child not in family)
    family.discard(os.getpid())
    return family


class ServerUnderTest:
    """A server under test, started in a session of its own so everything it spawns can be
    measured (CPU) and stopped: SIGTERM to the server, then SIGKILL, by pid, to whatever of its
    session and process tree is still alive a few seconds after."""

    def __init__(self, name: str, argv: list[str], log_path: Path, url: str):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.url = url
        self.process: subprocess.Popen | None = None
        self._log: Any = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server and everything it started (the reaped children too)."""
        if self.process is None:
            return 0.0
        table = _process_table()
        return sum(table[pid][2] for pid in _family_pids(self.process.pid, table)) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, num_chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None:
            return
        root = self.process.pid
        table = _process_table()
        # Taken before the root exits and orphans them; with sessions, so a reused pid is spared.
        family = {pid: table[pid][1] for pid in _family_pids(root, table)}
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5.0
        while True:
            table = _process_table()
            still = {pid for pid, session in family.items() if pid in table and table[pid][1] == session}
            left = sorted(still | _family_pids(root, table))
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for pid in left:  # whatever ignored SIGTERM, or was orphaned by its parent's exit
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        if self._log:
            self._log.close()


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, connection: http.client.HTTPConnection | None = None) -> tuple[int, float]:
    """One blocking request; (status or 0 on failure, seconds)."""
    parsed = url.split("://", 1)[1]
    hostport, _, path = parsed.partition("/")
    conn = connection or http.client.HTTPConnection(hostport, timeout=timeout_s)
    begin = time.perf_counter()
    try:
        conn.request("POST", "/" + path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - begin
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0, time.perf_counter() - begin
    finally:
        if connection is None:
            conn.close()


def wait_ready(server: ServerUnderTest, spec: LoadSpec, timeout_s: float) -> None:
    """Until a real inference request is answered 200 (the server, its model and its route)."""
    body, headers = build_infer_body(spec)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive:
            raise RuntimeError(f"{server.name} exited during start-up (code {server.process.returncode}):\n{server.log_tail()}")
        status, _ = _post(spec.infer_url, body, headers, timeout_s=10.0)
        if status == 200:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} was not answering within {timeout_s:.0f} s:\n{server.log_tail()}")


def wait_idle(spec: LoadSpec, threshold_ms: float, limit_s: float) -> bool:
    """After a point: until a lone request is fast again (queues drained), for at most
    `limit_s`; whether it got there."""
    body, headers = build_infer_body(spec)
    hostport = spec.url.split("://", 1)[1].split("/", 1)[0]
    connection = http.client.HTTPConnection(hostport, timeout=max(1.0, limit_s))
    deadline = time.monotonic() + limit_s
    fast = 0
    try:
        while time.monotonic() < deadline:
            status, elapsed_s = _post(spec.infer_url, body, headers, timeout_s=limit_s, connection=connection)
            fast = fast + 1 if status == 200 and elapsed_s * 1000.0 <= threshold_ms else 0
            if fast >= 3:
                return True
            if status != 200:
                time.sleep(0.05)
    finally:
        connection.close()
    return False
