"""The edge client against a scripted WebSocket server: recovery after a bandwidth dip, and a
session the server closes."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import numpy as np
import pytest
import websockets

from shoal.client.edge import EdgeClient, EdgeClientConfig, SessionClosed
from shoal.client.network import BandwidthTrace, EmulatedLink
from shoal.runtime.edge.protocol import decode_frame
from shoal.runtime.edge.websocket import MAX_MESSAGE_BYTES

from shoal.experiments.server_process import free_port

LADDER = [{"input_size": 16, "variant": "f.small", "accuracy": 0.5, "server_ms": 1.0},
          {"input_size": 64, "variant": "f.large", "accuracy": 0.9, "server_ms": 1.0}]  # fmt: skip


def scripted_server(close_after_s: float | None = None):
    """Registers the client on the ladder, acknowledges and answers every frame at once,
    answers pings; closes the session (1001) after `close_after_s` if given. Serve it with
    `max_size=MAX_MESSAGE_BYTES`, as shoal's server: over loopback the estimate reaches hundreds
    of Mbit/s and a probe's padding megabytes (websockets' default limit, 1 MiB, closed the
    session with 1009 in about one run of five)."""

    async def handler(socket):
        await socket.recv()
        await socket.send(json.dumps({"type": "registered", "client": "c", "ladder": LADDER}))
        await socket.send(json.dumps({"type": "assignment", "variant": "f.large", "input_size": 64, "server_ms": 1.0, "served": True, "reason": ""}))
        end = time.monotonic() + (close_after_s if close_after_s is not None else 3600.0)
        while (left_s := end - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(socket.recv(), left_s)
            except (TimeoutError, websockets.ConnectionClosed):
                break
            if isinstance(message, bytes):
                header, _ = decode_frame(message, channels=3, max_side_px=64)
                await socket.send(json.dumps({"type": "ack", "seq": header.seq}))
                await socket.send(json.dumps({"type": "result", "seq": header.seq, "class": 0, "variant": "f.large", "server_ms": 1.0}))
            elif json.loads(message)["type"] == "ping":
                await socket.send(json.dumps({"type": "pong", "id": json.loads(message)["id"]}))
        await socket.close(1001, "server going away")

    return handler


def frames():
    return itertools.repeat((np.zeros((3, 64, 64), np.uint8), 0))


def test_a_planned_client_measures_the_link_again_after_a_dip_that_skipped_every_frame():
    """During the dip no input size fits, so every frame is skipped; nothing sent meant no
    acknowledgement and no new estimate, and the client skipped every frame after the link came
    back too. Now one small frame goes out per probe interval and times the link."""
    trace = BandwidthTrace("dip", (20.0, 0.05, 0.05, 20.0, 20.0, 20.0, 20.0, 20.0))
    port = free_port()

    async def scenario():
        async with websockets.serve(scripted_server(), "127.0.0.1", port, max_size=MAX_MESSAGE_BYTES):
            link = EmulatedLink(trace, propagation_ms=2.0)
            client = EdgeClient(EdgeClientConfig("c", f"ws://127.0.0.1:{port}", "f", slo_ms=100.0, fps=10.0, initial_bandwidth_mbps=20.0), uplink=link)
            return await client.run(frames(), duration_s=7.0)

    records = asyncio.run(scenario())
    assert any(record.outcome == "skipped" for record in records if 1.5 < record.captured_s < 2.5)  # the dip
    after = [record for record in records if record.captured_s > 5.0]
    assert after and sum(record.outcome == "on_time" for record in after) >= len(after) // 2


def test_a_session_the_server_closes_ends_the_run_with_the_reason():
    """The client streamed on for its whole duration, recording each later frame as skipped,
    and its senders' errors surfaced only as 'Task exception was never retrieved'."""
    port = free_port()

    async def scenario():
        async with websockets.serve(scripted_server(close_after_s=1.0), "127.0.0.1", port, max_size=MAX_MESSAGE_BYTES):
            client = EdgeClient(EdgeClientConfig("c", f"ws://127.0.0.1:{port}", "f", slo_ms=100.0, fps=10.0, initial_bandwidth_mbps=10.0))
            started = time.monotonic()
            with pytest.raises(SessionClosed, match=r"code 1001: server going away"):
                await client.run(frames(), duration_s=6.0)
            return time.monotonic() - started, client.records

    elapsed_s, records = asyncio.run(scenario())
    assert elapsed_s < 4.0
    assert any(record.outcome == "on_time" for record in records)
    assert not any(record.outcome == "skipped" for record in records)


def test_the_trace_starts_over_with_the_first_frame():
    """Clients compared on one trace meet the same stretch of it with the same frame: the link's
    clock started at its creation, so a client that took 1.7 s to connect and register (shoal's
    first setting, loading its model) met the trace 1.7 s later than the static ones."""
    now = [100.0]
    link = EmulatedLink(BandwidthTrace("steps", (10.0, 1.0, 5.0)), offset_s=1.0, clock=lambda: now[0])
    now[0] += 1.7  # connection and registration
    link.restart()
    assert link.trace_time_s() == 1.0 and link.bandwidth_mbps() == 1.0
    assert link.backlog_ms() == 0.0


def test_a_session_closed_early_keeps_its_frames_and_counts_the_rest_as_unanswered():
    from shoal.experiments.edge_serving import EdgeScenario, _with_frames_never_captured

    scenario = EdgeScenario("f", BandwidthTrace("flat", (10.0,)), (0.0,), fps=10.0, duration_s=1.0)
    kept = [_answered(seq) for seq in range(3)]
    records = _with_frames_never_captured(kept, scenario, "SessionClosed: code 1012")
    assert len(records) == 10 and records[:3] == kept
    assert all(record.outcome == "unanswered" and "1012" in record.reason for record in records[3:])


def _answered(seq):
    from shoal.client.edge import FrameRecord

    return FrameRecord(seq, seq / 10.0, 16, 0, 10.0, 10.0, outcome="on_time")
