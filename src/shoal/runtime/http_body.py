"""Reading a request body under a size limit: shared by the serving frontend and the capacity
service, so that both refuse an oversized body the same way (before reading it when its
Content-Length says so, else as soon as it passes the limit) and neither holds more of it."""

from __future__ import annotations

from starlette.requests import Request

from shoal.runtime.errors import PayloadTooLargeError

__all__ = ["read_limited_body"]


async def read_limited_body(request: Request, max_body_bytes: int) -> bytes:
    """The whole body, or PayloadTooLargeError once it exceeds `max_body_bytes`."""
    declared = request.headers.get("content-length")
    # str.isdigit alone takes digits such as "²" that int() refuses: ASCII digits only.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_body_bytes:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of {max_body_bytes}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_body_bytes:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_body_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
