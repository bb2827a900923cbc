"""The one-write HTTP protocol: each response's head and first body part in one socket write,
with the bytes uvicorn's own protocol sends, for every exchange shape tried here."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from shoal.runtime.http_protocol import one_write_protocol


class RecordingTransport(asyncio.Transport):
    """Keeps every write as it was made; reads are never paused for real."""

    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope, receive, send):
    """A few response shapes, picked by path: a plain body, a stream in chunks, an empty body,
    a failure after the response started."""
    await receive()
    if scope["path"] == "/fail":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("the app failed half-way")
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    body = b"" if scope["path"] == "/empty" else b'{"ok": true}'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _exchange(protocol_class, request: bytes) -> RecordingTransport:
    async def scenario():
        config = uvicorn.Config(_app, http=protocol_class, lifespan="off", log_level="warning", date_header=False, server_header=False)
        config.load()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        for _ in range(50):  # the app's tasks, however many passes they take
            await asyncio.sleep(0)
        return transport

    return asyncio.run(scenario())


REQUESTS = {
    "plain": b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n",
    "head": b"HEAD /plain HTTP/1.1\r\nHost: x\r\n\r\n",
    "empty": b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n",
    "stream": b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
    "close": b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "pipelined": b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\nGET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
    "fail": b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n",
    "continue": b"POST /plain HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_responses_are_the_bytes_uvicorn_sends(name):
    ours = _exchange(one_write_protocol(), REQUESTS[name])
    theirs = _exchange(HttpToolsProtocol, REQUESTS[name])
    assert b"".join(ours.writes) == b"".join(theirs.writes) != b""
    assert ours.closed == theirs.closed


@pytest.mark.parametrize(("name", "writes"), [("plain", 1), ("empty", 1), ("head", 1), ("close", 1), ("stream", 3), ("pipelined", 4), ("continue", 2), ("fail", 1)])
def test_a_response_head_goes_out_with_its_first_body_part(name, writes):
    ours = _exchange(one_write_protocol(), REQUESTS[name])
    assert len(ours.writes) == writes
    if name == "continue":  # the interim answer, written when the app reads the body, goes first
        assert ours.writes.pop(0) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert ours.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    if name == "fail":  # the head alone, before the connection closes, as uvicorn sends it
        assert ours.writes[0].endswith(b"\r\n\r\n") and ours.closed
    if name in ("plain", "close"):
        assert ours.writes[0].endswith(b'\r\n\r\n{"ok": true}')
    if name == "head":  # no body goes out for a HEAD, the head alone does
        assert ours.writes[0].endswith(b"\r\n\r\n")
    if name == "stream":  # the head and the first chunk, then the next chunk, then the end
        assert ours.writes[0].endswith(b"\r\n\r\n3\r\none\r\n") and ours.writes[2] == b"0\r\n\r\n"
