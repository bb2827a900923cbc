"""Edge sessions on a real server: registration, bad messages, pinned variants, and a client
whose bandwidth drops 5x being moved to a smaller input size within two scheduling intervals."""

from __future__ import annotations

import asyncio
import itertools
import json

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from shoal.client.edge import EdgeClient, EdgeClientConfig
from shoal.client.network import BandwidthTrace, EmulatedLink
from shoal.runtime.edge.protocol import EDGE_PATH, encode_frame
from shoal.zoo.repository import ModelRepository

from .conftest import start_server, stop_server

INTERVAL_S = 0.5


@pytest.fixture(scope="module")
def edge_server(fixture_repository_path):
    server = start_server(fixture_repository_path, "--edge-interval-s", str(INTERVAL_S))
    yield server
    stop_server(server)


def _ws_url(server) -> str:
    return f"ws://127.0.0.1:{server.http_port}{EDGE_PATH}"


def _register(socket, **fields) -> None:
    message = {"type": "register", "client": "cam", "model": "fixture", "slo_ms": 100, "fps": 10, "bandwidth_mbps": 20, **fields}
    socket.send(json.dumps(message))


def _receive_until(socket, kind: str, limit: int = 20) -> dict:
    for _ in range(limit):
        message = json.loads(socket.recv(timeout=10))
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind!r} message")


def test_session_answers_frames_and_survives_bad_messages(edge_server):
    with connect(_ws_url(edge_server)) as socket:
        _register(socket, client="cam-ok")
        registered = _receive_until(socket, "registered")
        assert [step["input_size"] for step in registered["ladder"]] == [16, 32, 64]
        assignment = _receive_until(socket, "assignment")
        assert assignment["served"] and assignment["variant"].startswith("fixture.")
        size = assignment["input_size"]

        socket.send(b"\x00\x00")  # not a frame
        assert "header length" in _receive_until(socket, "error")["message"]
        socket.send('{"type": "report", "bandwidth_mbps": -3}')
        assert "'bandwidth_mbps'" in _receive_until(socket, "error")["message"]
        _register(socket, client="cam-again")
        assert "already registered" in _receive_until(socket, "error")["message"]
        socket.send('{"type": "ping", "id": 5}')
        assert _receive_until(socket, "pong")["id"] == 5  # still open after the bad messages

        socket.send(encode_frame(0, np.zeros((3, size, size), dtype=np.uint8), 80.0))
        assert _receive_until(socket, "ack")["seq"] == 0
        result = _receive_until(socket, "result")
        assert result["seq"] == 0 and 0 <= result["class"] < 10 and result["variant"] == assignment["variant"]
        assert result["next"] == {"variant": assignment["variant"], "input_size": size}

        socket.send(encode_frame(1, np.zeros((3, size, size), dtype=np.uint8), -5.0))
        dropped = _receive_until(socket, "dropped")
        assert dropped["seq"] == 1 and "budget_ms" in dropped["reason"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"model": "nope"}, "not served"),
        ({"model": "fixture.rf-16"}, "one variant"),
        ({"pin_variant": "fixture.missing"}, "not served"),
        ({"pin_variant": "fixture"}, "field 'pin_variant': 'fixture' is a family"),  # a KeyError, no answer, before
        ({"slo_ms": 0}, "'slo_ms'"),
    ],
)
def test_bad_registrations_are_refused_and_closed(edge_server, fields, message):
    with connect(_ws_url(edge_server)) as socket:
        _register(socket, **fields)
        error = json.loads(socket.recv(timeout=10))
        assert error["type"] == "error" and message in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
        assert closed.value.rcvd.code == 1008


def test_a_frame_first_is_refused(edge_server):
    with connect(_ws_url(edge_server)) as socket:
        socket.send(encode_frame(0, np.zeros((3, 16, 16), dtype=np.uint8), 50.0))
        assert "register" in json.loads(socket.recv(timeout=10))["message"]


def test_duplicate_names_are_refused_while_the_first_session_is_open(edge_server):
    with connect(_ws_url(edge_server)) as first:
        _register(first, client="twin")
        _receive_until(first, "registered")
        with connect(_ws_url(edge_server)) as second:
            _register(second, client="twin")
            assert "already open" in json.loads(second.recv(timeout=10))["message"]


def test_pinned_variant_is_always_used(edge_server):
    with connect(_ws_url(edge_server)) as socket:
        _register(socket, client="static-cam", pin_variant="fixture.rf-16", bandwidth_mbps=0.01)
        assignment = _receive_until(socket, "assignment")
        assert (assignment["variant"], assignment["input_size"], assignment["reason"]) == ("fixture.rf-16", 16, "pinned")
        socket.send(encode_frame(3, np.zeros((3, 16, 16), dtype=np.uint8), 80.0))
        assert _receive_until(socket, "result")["variant"] == "fixture.rf-16"


def test_bandwidth_drop_moves_the_client_to_a_smaller_input_within_two_intervals(edge_server, fixture_repository_path):
    frames, labels = ModelRepository(fixture_repository_path).load_validation("fixture")
    drop_after_s = 3.0
    # 10 Mbit/s: a 64 px frame (99 kbit) uploads in 10 ms; after the 5x drop it takes 49 ms,
    # which with the round trip breaks the 40 ms SLO, while 32 px (25 kbit) takes 13 ms.
    trace = BandwidthTrace("drop", (10.0,) * int(drop_after_s) + (2.0,) * 20)
    source = ((frames[i % len(frames)], int(labels[i % len(frames)])) for i in itertools.count())
    # The server's first planned session starts its planner process and loads the planned
    # variants: on 2 cores that delayed the first frames' acknowledgements enough to collapse the
    # client's estimate, and the test failed in about half the runs before any drop. A session
    # before the measured one takes that start-up.
    warm_up = EdgeClient(EdgeClientConfig("warm-up", f"http://127.0.0.1:{edge_server.http_port}", "fixture", slo_ms=40.0, fps=15.0,
                                          initial_bandwidth_mbps=10.0), uplink=EmulatedLink(trace, propagation_ms=2.0))  # fmt: skip
    asyncio.run(warm_up.run(source, duration_s=1.5))
    link = EmulatedLink(trace, propagation_ms=2.0)
    drop_at = drop_after_s  # into the run: the trace starts over with the first frame, and assignment times count from it
    client = EdgeClient(
        EdgeClientConfig("dropping", f"http://127.0.0.1:{edge_server.http_port}", "fixture", slo_ms=40.0, fps=15.0, initial_bandwidth_mbps=10.0),
        uplink=link,
    )
    records = asyncio.run(client.run(source, duration_s=drop_after_s + 2.0))

    before = [size for at, _, size in client.assignments if at < drop_at]
    assert before and before[-1] == 64, f"at 10 Mbit/s the client should send 64 px, got {client.assignments}"
    moved = [at for at, _, size in client.assignments if at >= drop_at and size < 64]
    assert moved, f"never moved to a smaller input after the drop: {client.assignments}"
    assert moved[0] - drop_at <= 2 * INTERVAL_S
    # Every captured frame has exactly one outcome, and frames after the move are small.
    assert len({r.seq for r in records}) == len(records) and all(r.outcome != "unanswered" for r in records)
    late_frames = [r for r in records if r.captured_s - drop_at > 2 * INTERVAL_S]
    assert late_frames and all(r.input_size < 64 for r in late_frames)


def test_edge_runs_report_worker_utilisation_from_the_servers_metrics(edge_server, fixture_repository_path):
    from shoal.client.network import load_trace
    from shoal.experiments.edge_serving import EdgeScenario, run_edge_setting

    frames, labels = ModelRepository(fixture_repository_path).load_validation("fixture")
    scenario = EdgeScenario("fixture", load_trace("wifi"), (0.0, 50.0), fps=20.0, slo_ms=100.0, duration_s=1.5, propagation_ms=1.0)
    run = asyncio.run(run_edge_setting(edge_server.url, "static:fixture.rf-64", scenario, frames, labels))
    summary = run.summary()
    assert summary["frames"] == 60 and summary["answered"] > 0
    assert set(summary["worker_utilisation"]) == {"w0"}
    assert 0.0 < summary["worker_utilisation"]["w0"] < 1.0


def _raw_websocket(server, *, receive_buffer_bytes: int | None = None):
    """A bare socket through the WebSocket handshake, for clients no library would be: one that
    leaves at once, one that never reads."""
    import base64
    import os
    import socket as sockets

    raw = sockets.socket()
    if receive_buffer_bytes is not None:
        raw.setsockopt(sockets.SOL_SOCKET, sockets.SO_RCVBUF, receive_buffer_bytes)
    raw.connect(("127.0.0.1", server.http_port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(f"GET {EDGE_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 101")
    return raw


def _client_frame(opcode: int, payload: bytes) -> bytes:
    import os
    import struct

    mask, size = os.urandom(4), len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
    return bytes([0x80 | opcode]) + length + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def test_a_client_that_leaves_as_it_registers_leaves_no_session_behind(edge_server):
    import struct
    import time

    register = {"type": "register", "client": "leaver", "model": "fixture", "slo_ms": 100, "fps": 10, "bandwidth_mbps": 20}
    raw = _raw_websocket(edge_server)
    raw.sendall(_client_frame(1, json.dumps(register).encode()) + _client_frame(8, struct.pack(">H", 1000)))  # register, then close
    time.sleep(0.3)
    raw.close()
    # The name is free again once the server has seen the close (on a loaded machine that may
    # take longer than any fixed wait): a session left behind would hold it for good.
    deadline = time.monotonic() + 15.0
    while True:
        with connect(_ws_url(edge_server)) as socket:
            _register(socket, client="leaver")
            reply = json.loads(socket.recv(timeout=10))
        if reply["type"] == "registered" or time.monotonic() > deadline:
            break
        assert "already open" in reply.get("message", reply.get("error", str(reply))), reply
        time.sleep(0.2)
    assert reply["type"] == "registered" and reply["client"] == "leaver", reply


def test_a_client_that_never_reads_holds_no_one_else_s_assignment_and_an_operator_s_unload_holds(fixture_repository_path):
    """The operator unloads the variant the sessions use: every session, one whose socket is full
    included, gets a new assignment; that one's waits for it alone (the planning loop never waits
    on a client's socket), a session arriving next is assigned at once, and the planner does not
    bring the unloaded variant back."""
    import threading
    import time

    import httpx

    server = start_server(fixture_repository_path, "--edge-interval-s", str(INTERVAL_S))
    hog = None
    try:
        with connect(_ws_url(server)) as first:
            _register(first, client="reader-1")
            variant = _receive_until(first, "assignment")["variant"]
            register = {"type": "register", "client": "hog", "model": "fixture", "slo_ms": 100, "fps": 10, "bandwidth_mbps": 20}
            hog = _raw_websocket(server, receive_buffer_bytes=4096)
            header = json.dumps({"seq": 0, "shape": [3, 1, 1], "budget_ms": -1}).encode()
            tiny = _client_frame(2, len(header).to_bytes(4, "big") + header + b"\0\0\0")
            flood = _client_frame(1, json.dumps(register).encode()) + tiny * 80_000  # its answers (~8 MB) pile up unread, past the kernel's buffers

            def send_flood() -> None:  # blocks once the server stops reading it; ends when the socket closes
                try:
                    hog.sendall(flood)
                except OSError:
                    pass

            threading.Thread(target=send_flood, daemon=True).start()
            time.sleep(2.0)
            assert httpx.post(f"{server.url}/v2/repository/models/{variant}/unload", timeout=30).status_code == 200
            moved = _receive_until(first, "assignment")["variant"]
            with connect(_ws_url(server)) as second:
                started = time.monotonic()
                _register(second, client="reader-2")
                assert _receive_until(second, "assignment")["variant"] != variant
                waited_s = time.monotonic() - started
            time.sleep(3 * INTERVAL_S)
            still_unloaded = httpx.get(f"{server.url}/v2/models/{variant}/ready").status_code == 503
        hog.shutdown(2)  # socket.SHUT_RDWR: wakes the flood's sendall; its unread answers make the close a reset
        hog.close()
        hog = None
        released = False  # the stuck session is let go once its client is gone: its name is free again
        deadline = time.monotonic() + 10.0
        while not released and time.monotonic() < deadline:
            with connect(_ws_url(server)) as again:
                _register(again, client="hog")
                released = json.loads(again.recv(timeout=5))["type"] == "registered"
            time.sleep(0.1)
    finally:
        if hog is not None:
            hog.close()
        stop_server(server)
    assert moved != variant and waited_s < 5.0 and still_unloaded and released


def test_frame_errors_name_their_frame_and_huge_numbers_do_not_end_the_session(edge_server):
    with connect(_ws_url(edge_server)) as socket:
        _register(socket, client="cam-errors")
        _receive_until(socket, "assignment")
        socket.send(encode_frame(7, np.zeros((3, 8, 4), dtype=np.uint8), 80.0))  # not square
        error = _receive_until(socket, "error")
        assert error["seq"] == 7 and "'shape'" in error["message"]
        socket.send('{"type": "ping", "id": ' + "9" * 5000 + "}")  # past Python's digit limit for int()
        assert "JSON" in _receive_until(socket, "error")["message"]
        socket.send('{"type": "ping", "id": 6}')
        assert _receive_until(socket, "pong")["id"] == 6


def test_a_frame_over_the_message_limit_gets_an_error_and_the_session_stays(edge_server):
    with connect(_ws_url(edge_server), max_size=None) as socket:
        _register(socket, client="cam-large")
        size = _receive_until(socket, "assignment")["input_size"]
        socket.send(encode_frame(3, np.zeros((3, size, size), dtype=np.uint8), 80.0, padding=16 * 1024 * 1024))
        assert "exceeds the 16777216-byte limit" in _receive_until(socket, "error")["message"]
        socket.send('{"type": "ping", "id": 8}')
        assert _receive_until(socket, "pong")["id"] == 8


def test_sessions_are_told_when_an_operator_unloads_every_variant_and_again_when_one_is_back(fixture_repository_path):
    """With no variant of its family left to plan with, a served session gets an unserved
    assignment whose reason says how to load one; loading the family serves it again."""
    import httpx

    server = start_server(fixture_repository_path, "--edge-interval-s", str(INTERVAL_S))
    try:
        with connect(_ws_url(server)) as socket:
            _register(socket, client="cam")
            assert _receive_until(socket, "assignment")["served"]
            assert httpx.post(f"{server.url}/v2/repository/models/fixture/unload", timeout=30).status_code == 200
            unserved = _next_assignment(socket, served=False)
            assert httpx.post(f"{server.url}/v2/repository/models/fixture/load", timeout=60).status_code == 200
            served_again = _next_assignment(socket, served=True)
    finally:
        stop_server(server)
    assert "/v2/repository/models/fixture/load" in unserved["reason"]
    assert served_again["variant"].startswith("fixture.")


def _next_assignment(socket, *, served: bool, limit: int = 10) -> dict:
    """The next assignment whose `served` is as asked (a re-plan may send others first)."""
    for _ in range(limit):
        message = _receive_until(socket, "assignment")
        if message["served"] == served:
            return message
    raise AssertionError(f"no assignment with served={served}")


def test_pinned_and_per_query_sessions_are_told_too_and_a_plan_raced_by_an_unload_does_not_load_it_back(fixture_repository_path):
    """In-process: pinned and per-query sessions (never planned) get unserved assignments when
    what they use is unloaded and served ones when it is back; an operator's unload that lands
    while a plan is being made wins (that plan is dropped, nothing is loaded back)."""
    from shoal.runtime.edge.protocol import Register
    from shoal.runtime.edge.sessions import EdgeSessionManager
    from shoal.runtime.service import InferenceService
    from shoal.runtime.worker_manager import ServeConfig

    async def ignore(message):
        pass

    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, num_workers=1, intra_op_threads=1))
        await service.start()
        edge = EdgeSessionManager(service, interval_s=INTERVAL_S)
        try:
            register = dict(model="fixture", slo_ms=200, fps=5, bandwidth_mbps=50)
            planned, _ = edge.register(Register(client="cam", **register), ignore)
            pinned, _ = edge.register(Register(client="pin", pin_variant="fixture.rf-16", **register), ignore)
            per_query, _ = edge.register(Register(client="pq", selection="per_query", **register), ignore)
            await edge.replan()
            await service.unload_model("fixture")
            await edge.replan()
            unserved = {s.name: (s.instruction.served, s.instruction.reason) for s in (planned, pinned, per_query)}
            await service.load_model("fixture")
            await edge.replan()
            back = {s.name: s.instruction.served for s in (planned, pinned, per_query)}

            plan = edge._planner.plan

            async def plan_raced_by_an_unload(instance, policy):
                made = await plan(instance, policy)
                await service.unload_model("fixture")  # lands while the plan is being made
                return made

            edge._planner.plan = plan_raced_by_an_unload
            await edge.replan()
            held = {key: len(service.scheduler.workers_for(key)) for key in service.variants}
        finally:
            edge.close()
            await service.stop()
        return unserved, back, held

    unserved, back, held = asyncio.run(scenario())
    assert all(not served for served, _ in unserved.values()), unserved
    assert "/v2/repository/models/fixture.rf-16/load" in unserved["pin"][1]
    assert "/v2/repository/models/fixture/load" in unserved["pq"][1] and "/v2/repository/models/fixture/load" in unserved["cam"][1]
    assert back == {"cam": True, "pin": True, "pq": True}
    assert set(held.values()) == {0}, held


def test_reports_of_sessions_no_plan_includes_do_not_wake_the_planner():
    """A pinned session is in no plan: each of its reports (four a second) woke the planner
    for a full replan, whatever its bandwidth; a planned one wakes it when its bandwidth moved."""
    from shoal.runtime.edge.protocol import Report
    from shoal.runtime.edge.sessions import EdgeSession, EdgeSessionManager, _FamilyState

    async def scenario():
        manager = object.__new__(EdgeSessionManager)  # only what report() reads
        manager._families = {"fam": _FamilyState(planned_mbps={"planned-cam": 20.0})}
        manager.replan_change, manager._wake = 0.3, asyncio.Event()

        async def send(message):
            pass

        woken = {}
        for session, mbps in ((EdgeSession("pinned-cam", "fam", 100, 15, 20.0, 1.0, "fam.small", send), 20.0),
                              (EdgeSession("planned-cam", "fam", 100, 15, 20.0, 1.0, None, send), 20.0),
                              (EdgeSession("planned-cam", "fam", 100, 15, 20.0, 1.0, None, send), 5.0)):  # fmt: skip
            manager._wake.clear()
            manager.report(session, Report(type="report", bandwidth_mbps=mbps, rtt_ms=1.0))
            woken[(session.name, mbps)] = manager._wake.is_set()
        return woken

    assert asyncio.run(scenario()) == {("pinned-cam", 20.0): False, ("planned-cam", 20.0): False, ("planned-cam", 5.0): True}


def test_a_frame_s_budget_is_held_to_its_session_s_slo_and_a_report_without_rtt_keeps_the_last():
    """A budget of 60 s on a 100 ms session queued its frames on a deadline no session
    registered, ahead of other sessions' (all of another client's frames were dropped)."""
    from types import SimpleNamespace

    from shoal.runtime.edge.protocol import FrameHeader, Report
    from shoal.runtime.edge.sessions import EdgeSession, EdgeSessionManager
    from shoal.runtime.errors import DeadlineExceededError

    asked = []

    async def infer(model, inputs, parameters, outputs):
        asked.append(parameters["slo_ms"])
        raise DeadlineExceededError("too late")

    async def send(message):
        pass

    manager = object.__new__(EdgeSessionManager)  # only what serve_frame and report read
    manager.service = SimpleNamespace(families={"fam": SimpleNamespace(input_name="images")}, infer=infer)
    manager._families, manager._wake, manager.replan_change = {}, asyncio.Event(), 0.3
    session = EdgeSession("cam", "fam", 100.0, 15.0, 20.0, 7.0, "fam.small", send)
    pixels = np.zeros((3, 4, 4), np.uint8)
    for budget_ms, expected_ms in ((60_000.0, 100.0), (40.0, 40.0)):
        reply = asyncio.run(manager.serve_frame(session, FrameHeader(seq=1, shape=(3, 4, 4), budget_ms=budget_ms), pixels))
        assert reply["type"] == "dropped" and asked[-1] == expected_ms
    manager.report(session, Report(bandwidth_mbps=5.0))  # its rtt_ms read as 0 ms
    assert session.rtt_ms == 7.0 and session.bandwidth_mbps == 5.0


def test_the_planner_remembers_the_bandwidths_it_planned_with_and_forgets_a_family_left_empty(fixture_repository_path):
    """A report that came while a plan was made was taken as planned for (the recorded bandwidth
    was the session's current one), so a jump back never re-planned; and a family's last
    bandwidths outlived its sessions, so a pinned session reusing a name woke the planner."""
    from shoal.runtime.edge.protocol import Register, Report
    from shoal.runtime.edge.sessions import EdgeSessionManager
    from shoal.runtime.service import InferenceService
    from shoal.runtime.worker_manager import ServeConfig

    async def ignore(message):
        pass

    async def scenario():
        service = InferenceService(ServeConfig(repository=fixture_repository_path, num_workers=1, intra_op_threads=1))
        await service.start()
        manager = EdgeSessionManager(service)
        try:
            cam, _ = manager.register(Register(client="cam", model="fixture", slo_ms=100, fps=15, bandwidth_mbps=50, rtt_ms=1), ignore)
            await manager.replan()
            manager.report(cam, Report(bandwidth_mbps=2.0, rtt_ms=1))
            manager._wake.clear()
            real_plan = manager._planner.plan

            async def plan_while_the_link_recovers(instance, policy):
                made = await real_plan(instance, policy)
                manager.report(cam, Report(bandwidth_mbps=50.0, rtt_ms=1))
                return made

            manager._planner.plan = plan_while_the_link_recovers
            await manager.replan()
            planned = dict(manager._families["fixture"].planned_mbps)
            manager._wake.clear()
            manager.report(cam, Report(bandwidth_mbps=50.0, rtt_ms=1))  # the next report, at the recovered rate
            woken_by_recovery = manager._wake.is_set()
            manager._planner.plan = real_plan
            manager.unregister(cam)
            await manager.replan()
            forgotten = "fixture" not in manager._families
            pinned, _ = manager.register(
                Register(client="cam", model="fixture", pin_variant="fixture.rf-16", slo_ms=100, fps=15, bandwidth_mbps=50, rtt_ms=1), ignore
            )
            manager._wake.clear()
            manager.report(pinned, Report(bandwidth_mbps=5.0, rtt_ms=1))
            return planned, woken_by_recovery, forgotten, manager._wake.is_set()
        finally:
            manager.close()
            await service.stop()

    planned, woken_by_recovery, forgotten, pinned_woke = asyncio.run(scenario())
    assert planned == {"cam": 2.0} and woken_by_recovery
    assert forgotten and not pinned_woke


def test_reports_that_wake_the_planner_every_10_ms_do_not_replan_every_10_ms():
    """A client alternating its reported bandwidth every 10 ms got 175 plans in 3.5 s, each
    flipping other sessions' variants; an early plan now waits for what else arrives."""
    from shoal.runtime.edge.sessions import EdgeSessionManager

    async def scenario():
        manager = object.__new__(EdgeSessionManager)  # only what run() reads
        manager.interval_s, manager._wake = 10.0, asyncio.Event()
        plans = []

        async def replan():
            plans.append(asyncio.get_running_loop().time())

        manager.replan = replan
        runner = asyncio.create_task(manager.run())
        for _ in range(50):  # 0.5 s of reports, each a bandwidth jump
            manager._wake.set()
            await asyncio.sleep(0.01)
        runner.cancel()
        return len(plans)

    plans = asyncio.run(scenario())
    assert 1 <= plans <= 0.5 / EdgeSessionManager.MIN_REPLAN_GAP_S + 1
