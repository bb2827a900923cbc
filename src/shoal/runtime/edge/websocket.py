"""The edge session endpoint: one WebSocket per streaming client (format in `protocol`).

Frames are acknowledged on arrival (the client times its uploads by the acknowledgements) and
served concurrently, so a client can keep several frames in flight at its frame rate. Every
frame gets exactly one answer: a result, a drop with its reason, or an error. A malformed
message is answered with an error that names the field and the session stays open; only a
bad registration closes the socket (code 1008).
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from shoal.runtime.edge.protocol import EDGE_PATH, Ping, ProtocolError, Register, Report, decode_frame, dumps, frame_seq, parse_client_message
from shoal.runtime.edge.sessions import EdgeSession, EdgeSessionManager, assignment_message
from shoal.runtime.errors import ServingError

__all__ = ["edge_route"]

logger = logging.getLogger(__name__)

POLICY_VIOLATION = 1008


class FrameAllowance:
    """A session's frames at its registered rate: a token bucket refilled at 1.25 x `fps` and
    holding a second of frames (at least 2), so that jitter and a burst after a stall pass while
    a client that registered 1 fps cannot stream 400 frames a second and crowd every other
    session's frames out of the workers (a reviewer's flood dropped all of another client's)."""

    def __init__(self, fps: float, now_s: float):
        self.rate_per_s = 1.25 * fps
        self.capacity = max(2.0, fps)
        self.tokens = self.capacity
        self.updated_s = now_s

    def take(self, now_s: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now_s - self.updated_s) * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest edge message a session answers (an error reply above it); the HTTP server's own
WebSocket limit must sit above it (`WEBSOCKET_MAX_BYTES`), or it closes the whole session first."""
WEBSOCKET_MAX_BYTES = MAX_MESSAGE_BYTES + 1024 * 1024


def edge_route(manager: EdgeSessionManager, *, max_frames_in_flight: int = 64, max_message_bytes: int = MAX_MESSAGE_BYTES) -> WebSocketRoute:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        lock = asyncio.Lock()

        async def send(message: dict) -> None:
            async with lock:
                await websocket.send_text(dumps(message))

        session: EdgeSession | None = None
        in_flight: set[asyncio.Task] = set()
        assignments: asyncio.Task | None = None  # the session's outbox, sent by its own task
        try:
            session = await _register(websocket, manager, send)
            if session is None:
                return
            allowance = FrameAllowance(session.fps, time.monotonic())
            assignments = asyncio.create_task(session.deliver(), name=f"edge-assignments-{session.name}")
            assignments.add_done_callback(lambda task: task.cancelled() or task.exception())  # a closed socket ends it: expected
            family = manager.service.families[session.family]

            async def answer(header, pixels) -> None:
                try:
                    reply = await manager.serve_frame(session, header, pixels)
                except Exception:
                    logger.exception("edge: frame %d of %s failed", header.seq, session.name)
                    reply = {"type": "error", "seq": header.seq, "message": "internal server error"}
                try:
                    await send(reply)
                except Exception:
                    pass  # the client left; nothing to answer to

            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data, text = message.get("bytes"), message.get("text")
                if data is not None:
                    if len(data) > max_message_bytes:
                        reply = {"type": "error", "message": f"frame of {len(data)} bytes exceeds the {max_message_bytes}-byte limit"}
                        if (seq := frame_seq(data)) is not None:
                            reply["seq"] = seq
                        await send(reply)
                        continue
                    try:
                        header, pixels = decode_frame(data, channels=family.input_channels, max_side_px=family.source_image_px)
                    except ProtocolError as error:
                        reply = {"type": "error", "message": str(error)}
                        if error.seq is not None:  # the header was read: the client can match the answer to its frame
                            reply["seq"] = error.seq
                        await send(reply)
                        continue
                    await send({"type": "ack", "seq": header.seq})
                    if not allowance.take(time.monotonic()):
                        await send({"type": "dropped", "seq": header.seq, "reason": f"frames arrive faster than the registered {session.fps:g} fps"})
                        continue
                    if len(in_flight) >= max_frames_in_flight:
                        await send({"type": "dropped", "seq": header.seq, "reason": f"more than {max_frames_in_flight} frames in flight"})
                        continue
                    task = asyncio.create_task(answer(header, pixels))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    continue
                try:
                    parsed = parse_client_message(text or "")
                except ProtocolError as error:
                    await send({"type": "error", "message": str(error)})
                    continue
                if isinstance(parsed, Ping):
                    await send({"type": "pong", "id": parsed.id})
                elif isinstance(parsed, Report):
                    manager.report(session, parsed)
                else:
                    await send({"type": "error", "message": "this session is already registered; open a new one to register again"})
        except WebSocketDisconnect:
            pass
        finally:
            if session is not None:
                manager.unregister(session)
            for task in in_flight:
                task.cancel()
            if assignments is not None:
                assignments.cancel()

    return WebSocketRoute(EDGE_PATH, endpoint)


async def _register(websocket: WebSocket, manager: EdgeSessionManager, send) -> EdgeSession | None:
    first = await websocket.receive()
    if first["type"] == "websocket.disconnect":
        return None
    try:
        if first.get("text") is None:
            raise ProtocolError("the first message must be a JSON register message, not a frame")
        request = parse_client_message(first["text"])
        if not isinstance(request, Register):
            raise ProtocolError("field 'type': the first message must be 'register'")
        session, ladder = manager.register(request, send)
    except (ProtocolError, ServingError) as error:
        text = error.message if isinstance(error, ServingError) else str(error)
        await send({"type": "error", "message": text})
        await websocket.close(code=POLICY_VIOLATION, reason=text[:120])
        return None
    try:
        await send(
            {
                "type": "registered",
                "client": session.name,
                "ladder": [
                    {"input_size": step.input_size_px, "variant": step.variant, "accuracy": step.accuracy, "server_ms": step.server_ms}
                    for step in ladder
                ],
            }
        )
        if session.instruction is not None:  # pinned and per-query sessions need no plan
            await send(assignment_message(session.instruction))
    except BaseException:  # gone before it heard back: its name must not stay taken, nor its fps planned
        manager.unregister(session)
        raise
    return session
