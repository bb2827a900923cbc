"""Keep-alive HTTP/1.1 connections that send one prebuilt request, for the load generator.

Why not aiohttp (which the generator used until 2026-11-30): on this project's 2-core machines
the generator shares the cores with the server it measures, so every millisecond of its CPU is
taken from the system under test. aiohttp spends ~0.25 ms of CPU per 196 KB request here (a
coroutine and a task per request, header dictionaries, a response object, a stream reader). A
load generator sends the same bytes every time and needs only the status, two headers and the
body back, so it can do what wrk does: write the prebuilt request with one `transport.write`
and parse the reply with httptools (the C parser uvicorn uses) in callbacks, with no task per
request. Connections are opened on demand and reused, most recently used first, so that a
light load runs on few connections and idle ones are the ones the server may time out.

Each connection carries one request at a time (no pipelining: a pipelined request would wait
for the one ahead of it in the client, and that wait would be counted against the server).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

__all__ = ["KeepAlivePool", "OnError", "OnReply", "build_post_request"]

OnReply = Callable[[int, bytes, "str | None"], None]
"""(HTTP status, body, value of the pool's `reply_header` or None)."""
OnError = Callable[[str], None]
"""(name of what went wrong, e.g. ConnectionRefusedError or ServerDisconnectedError)."""


logger = logging.getLogger(__name__)


def build_post_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """(host, port, bytes of one HTTP/1.1 POST of `body` to `url`, headers included).

    Raises ValueError for anything but a plain http:// URL with a host.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"url must be http://host[:port]/path, got {url!r}")
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() not in ("host", "content-length")]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return parts.hostname, port, head + body


class _Connection(asyncio.Protocol):
    """One TCP connection: writes the request, parses the reply, hands itself back to the pool."""

    def __init__(self, pool: "KeepAlivePool") -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._on_reply: OnReply | None = None
        self._on_error: OnError | None = None
        self._chunks: list[bytes] = []
        self._header_length: str | None = None
        self._awaiting = False  # a request was sent on this connection and has no outcome yet
        self.open = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        self.open = True
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small replies must not wait for Nagle's algorithm
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(f"HttpParserError: {error}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._pool._forget(self)
        self._fail(type(exc).__name__ if exc is not None else "ServerDisconnectedError")

    @property
    def usable(self) -> bool:
        """Open and not closing: the server may have sent its FIN before `connection_lost` ran."""
        return self.open and self._transport is not None and not self._transport.is_closing()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == self._pool.reply_header:
            self._header_length = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if not self._awaiting:  # a reply nobody asked for: the connection cannot be trusted
            self._chunks = []
            self.close()
            return
        self._awaiting = False
        on_reply = self._on_reply
        status = self._parser.get_status_code()
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        header_length = self._header_length
        self._on_reply = self._on_error = None
        self._chunks = []
        self._header_length = None
        # Back in the pool before the callback runs, so a closed-loop client's next request
        # can go out on this same connection.
        if self._parser.should_keep_alive():
            self._pool._release(self)
        else:
            self.close()
        self._pool._done()
        if on_reply is not None:
            _call(on_reply, status, body, header_length)

    # -- used by the pool ------------------------------------------------------------------

    def send(self, request: bytes, on_reply: OnReply, on_error: OnError) -> None:
        assert self._transport is not None
        self._on_reply, self._on_error = on_reply, on_error
        self._awaiting = True
        self._transport.write(request)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        self._on_reply = self._on_error = None  # whoever closes the pool owns what is left
        self._awaiting = False
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, kind: str) -> None:
        """The request in flight on this connection, if any, ends with error `kind` (once)."""
        if not self._awaiting:
            return
        self._awaiting = False
        on_error = self._on_error
        self._on_reply = self._on_error = None
        self._chunks = []
        self._pool._done()
        if on_error is not None:
            _call(on_error, kind)


def _call(callback: Callable[..., None], *args: object) -> None:
    """Run a caller's callback; what it raises is logged, never fed back into the parser (which
    would count the same request again as a failure)."""
    try:
        callback(*args)
    except Exception:
        logger.exception("a keep-alive pool callback failed")


class KeepAlivePool:
    """Keep-alive connections to one server, all sending `request`: one per request in flight
    (the caller caps those), kept open afterwards up to `max_connections` idle ones.

    `send` never blocks and never raises: exactly one of its two callbacks runs later, unless
    the pool is closed first (then neither does, and the caller treats the request as
    unanswered). `in_flight` counts requests sent or waiting for a connection to open.
    """

    def __init__(self, host: str, port: int, request: bytes, *, max_connections: int, connect_timeout_s: float, reply_header: str = "") -> None:
        """`reply_header`: the one reply header whose value the reply callback gets (e.g. KServe's
        Inference-Header-Content-Length); the others are not kept."""
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.host, self.port, self.request = host, port, request
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.reply_header = reply_header.lower().encode("latin-1")
        self.in_flight = 0
        self._idle: list[_Connection] = []
        self._connections: set[_Connection] = set()
        self._opening: set[asyncio.Task[None]] = set()
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._closed = False

    def send(self, on_reply: OnReply, on_error: OnError) -> None:
        self.in_flight += 1
        self._all_done.clear()
        while self._idle:
            connection = self._idle.pop()
            if connection.usable:
                connection.send(self.request, on_reply, on_error)
                return
        task = asyncio.get_running_loop().create_task(self._open_and_send(on_reply, on_error))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def open_connections(self, count: int) -> int:
        """Open up to `count` idle connections now (never past `max_connections`), as wrk opens
        its connections before it measures; returns how many opened (a failed one is skipped:
        `send` reports such errors when it meets them).

        Why: without them, the first moments of a high rate open one connection per request
        until replies come back, and the server accepts hundreds of connections at once. Measured
        at 15,500 req/s from an idle shoal: every answer over 100 ms (118, up to 0.78 s) was a
        request sent in the first ~0.1 s; with 600 connections opened beforehand, none."""
        count = min(count, self.max_connections) - len(self._connections)
        if count <= 0:
            return 0
        opened = 0
        for connection in await asyncio.gather(*(self._connect() for _ in range(count)), return_exceptions=True):
            if isinstance(connection, BaseException):
                continue
            self._connections.add(connection)
            self._idle.append(connection)
            opened += 1
        return opened

    async def wait_all_done(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._all_done.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Drop every connection at once; requests still in flight get no callback."""
        self._closed = True
        for task in list(self._opening):
            task.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        for connection in list(self._connections):
            connection.abort()
        self._idle.clear()
        self._connections.clear()

    async def _connect(self) -> "_Connection":
        _, connection = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(lambda: _Connection(self), self.host, self.port), self.connect_timeout_s
        )
        return connection

    async def _open_and_send(self, on_reply: OnReply, on_error: OnError) -> None:
        try:
            connection = await self._connect()
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError) as error:
            self._done()
            if not self._closed:
                _call(on_error, type(error).__name__)
            return
        if self._closed:
            connection.abort()
            return
        self._connections.add(connection)
        connection.send(self.request, on_reply, on_error)

    def _release(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= self.max_connections:
            connection.close()
        else:
            self._idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def _done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._all_done.set()
