"""Experiment only: uvicorn writes a response's head and body in one transport write."""
import uvicorn.protocols.http.httptools_impl as h

_orig = h.RequestResponseCycle.send


class _Buffer:
    def __init__(self, real):
        self.real = real
        self.parts = []

    def write(self, data):
        self.parts.append(data)

    def __getattr__(self, name):
        return getattr(self.real, name)


_heads = {}


async def _written(self, message):
    """What uvicorn would write for `message`, captured instead of sent."""
    real = self.transport
    self.transport = _Buffer(real)
    try:
        await _orig(self, message)
    finally:
        buffer, self.transport = self.transport, real
    return b"".join(buffer.parts)


async def send(self, message):
    kind = message["type"]
    if kind == "http.response.start":
        _heads[id(self)] = await _written(self, message)
        return
    head = _heads.pop(id(self), None)
    if head is not None and kind == "http.response.body":
        self.transport.write(head + await _written(self, message))
        return
    if head is not None:
        self.transport.write(head)
    await _orig(self, message)


h.RequestResponseCycle.send = send
