"""uvicorn's httptools protocol, writing each response's head and body in one socket write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the
body when it sends `http.response.body`: two writes, two system calls on the event loop's
thread. On loopback each write also runs the receiver's side of TCP on that thread. A profile
of the frontend at 2x overload on the heavy demo variant had ~22% of its samples in these two
writes (benchmarks/results/serve-one-write/). Here the head is held back and written with the
first body part.

This leans on uvicorn's `RequestResponseCycle` (its `send` writing through `self.transport`,
and `HttpToolsProtocol.on_headers_complete` making the cycle): `one_write_protocol()` checks
for them and returns None where they are not there, and the server then runs uvicorn's own.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["one_write_protocol"]

logger = logging.getLogger(__name__)


class _HeldWrites:
    """Stands in for the transport while the head is written: keeps the bytes, sends nothing."""

    def __init__(self, transport: Any):
        self._transport = transport
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _HeadFirst:
    """Stands in for the transport from a response's start on: the held head goes out in front
    of the first write, or alone before the connection closes (an app that failed half-way),
    so that the client gets the same bytes uvicorn's own protocol would have sent."""

    def __init__(self, transport: Any, head: bytes):
        self._transport = transport
        self._head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self._head = self._head, None
        self._transport.write(data if head is None else head + data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def one_write_protocol() -> type | None:
    """The protocol class for `uvicorn.Config(http=...)`, or None where this uvicorn's internals
    are not the ones it was written against (then uvicorn's own protocol runs, as before)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    except ImportError:
        return None
    if not all(hasattr(RequestResponseCycle, name) for name in ("send", "run_asgi")) or not hasattr(HttpToolsProtocol, "on_headers_complete"):
        return None

    class OneWriteCycle(RequestResponseCycle):
        """A cycle whose response head waits for the first body part (see the module docstring)."""

        async def send(self, message: Any) -> None:
            if message.get("type") == "http.response.start" and not self.response_started:
                transport, held = self.transport, _HeldWrites(self.transport)
                self.transport = held
                try:
                    await super().send(message)
                finally:
                    self.transport = transport
                if held.chunks:  # none: the client had gone
                    self.transport = _HeadFirst(transport, b"".join(held.chunks))
                return
            if self.scope.get("method") == "HEAD" and isinstance(self.transport, _HeadFirst):
                self.transport.flush()  # no body is written for a HEAD: the head goes alone
            await super().send(message)

    class OneWriteHttpToolsProtocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            # A new request's cycle, not yet started (its task is only scheduled): make it ours.
            if self.cycle is not before and type(self.cycle) is RequestResponseCycle:
                self.cycle.__class__ = OneWriteCycle

    return OneWriteHttpToolsProtocol
