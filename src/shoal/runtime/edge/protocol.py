"""The edge session's wire format (WebSocket at `/v2/shoal/edge`), shared by server and SDK.

Text messages are JSON objects with a `type`; frames are binary messages.

Client -> server
    {"type": "register", "client", "model", "slo_ms", "fps", "bandwidth_mbps", "rtt_ms",
     "pin_variant", "selection"}                       first message, exactly once
    {"type": "report", "bandwidth_mbps", "rtt_ms"}     the client's current estimates
    {"type": "ping", "id"}                             answered at once with a pong
    binary: 4-byte big-endian header length, JSON header {"seq", "shape": [C, S, S],
            "budget_ms", "padding"}, then C*S*S uint8 pixels (row-major), then `padding`
            zero bytes (a bandwidth probe; ignored by the server)

Server -> client
    {"type": "registered", "client", "ladder": [{"input_size", "variant", "accuracy",
     "server_ms"}]}                                    the sizes it may fall back to
    {"type": "assignment", "variant", "input_size", "server_ms", "served", "reason"}
    {"type": "ack", "seq"}                             the frame has arrived (timing for estimation)
    {"type": "result", "seq", "class", "variant", "server_ms", "queue_ms", "compute_ms",
     "batch_size", "next": {"variant", "input_size"}}
    {"type": "dropped", "seq", "reason"}               deadline cannot be met / overloaded
    {"type": "error", "seq"?, "message"}               bad input; the session stays open
                                                       unless the registration itself was bad

`budget_ms` is what remains of the SLO for the server once the client has subtracted the
frame's age, its predicted upload time and the return trip: the request's server deadline.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "EDGE_PATH",
    "MAX_BUDGET_MS",
    "MAX_HEADER_BYTES",
    "MAX_PADDING_BYTES",
    "MAX_TEXT_MESSAGE_CHARS",
    "FrameHeader",
    "ProtocolError",
    "Register",
    "Report",
    "decode_frame",
    "encode_frame",
    "frame_seq",
    "parse_client_message",
]

EDGE_PATH = "/v2/shoal/edge"
_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 4096
MAX_BUDGET_MS = 60_000.0
"""A frame's `budget_ms` lies within +-this (a client clamps what it computes)."""
MAX_PADDING_BYTES = 16 * 1024 * 1024
MAX_TEXT_MESSAGE_CHARS = 64 * 1024
"""Register, report and ping messages are well under 1 KB; a longer text message is refused
before it is parsed, on the event loop every session shares."""


class ProtocolError(ValueError):
    """A message that does not follow this module's format; the text names the field. `seq`: the
    frame's, when its header could be read (the error answers that frame)."""

    def __init__(self, message: str, seq: int | None = None):
        super().__init__(message)
        self.seq = seq


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "12" or true for a number is a client bug, not a value


class Register(_Message):
    type: str = "register"
    client: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    model: str = Field(min_length=1, max_length=256)
    slo_ms: float = Field(gt=0, le=60_000)
    fps: float = Field(gt=0, le=1000)
    bandwidth_mbps: float = Field(gt=0, le=100_000)
    rtt_ms: float = Field(default=0.0, ge=0, le=60_000)
    pin_variant: str | None = None
    """A `<family>.<variant>` to use always (a static baseline); no planning for this client."""
    selection: Literal["plan", "per_query"] = "plan"
    """`plan`: the edge planner assigns a variant and input size. `per_query` (INFaaS-style,
    no data adaptation): the client sends full frames and the family's policy picks a variant
    for each frame within its budget."""


class Report(_Message):
    type: str = "report"
    bandwidth_mbps: float = Field(gt=0, le=100_000)
    rtt_ms: float | None = Field(default=None, ge=0, le=60_000)
    """None: not measured since the last report (the session keeps its last one)."""


class Ping(_Message):
    type: str = "ping"
    id: int = 0


class FrameHeader(_Message):
    seq: int = Field(ge=0)
    shape: tuple[int, int, int]
    budget_ms: float = Field(ge=-MAX_BUDGET_MS, le=MAX_BUDGET_MS)
    padding: int = Field(default=0, ge=0, le=MAX_PADDING_BYTES)


_CLIENT_MESSAGES: dict[str, type[_Message]] = {"register": Register, "report": Report, "ping": Ping}


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"field {where!r}: {first['msg']}"


def parse_client_message(text: str) -> _Message:
    """Parse one text message from a client; ProtocolError names what is wrong."""
    if len(text) > MAX_TEXT_MESSAGE_CHARS:  # refused unread: parsing 16 MiB took the event loop 2.4 s
        raise ProtocolError(f"a text message of {len(text)} characters is longer than the {MAX_TEXT_MESSAGE_CHARS} a client message needs")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProtocolError(f"text messages must be JSON objects ({error.msg} at position {error.pos})") from None
    except ValueError as error:  # an integer past Python's digit limit, say
        raise ProtocolError(f"text messages must be JSON objects ({error})") from None
    except RecursionError:
        raise ProtocolError("text messages must be JSON objects (nested too deep)") from None
    # A list or an object as the type would fail the lookup with a TypeError (unhashable).
    if not isinstance(data, dict) or not isinstance(data.get("type"), str) or data["type"] not in _CLIENT_MESSAGES:
        raise ProtocolError(f"field 'type' must be one of {', '.join(_CLIENT_MESSAGES)}")
    try:
        return _CLIENT_MESSAGES[data["type"]].model_validate(data)
    except ValidationError as error:
        raise ProtocolError(f"{data['type']}: {_describe(error)}") from None


def encode_frame(seq: int, pixels: np.ndarray, budget_ms: float, padding: int = 0) -> bytes:
    """A CHW uint8 frame as one binary message, followed by `padding` zero bytes."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ProtocolError(f"a frame must be a CHW uint8 array, got {pixels.dtype} with shape {pixels.shape}")
    fields = {"seq": seq, "shape": list(pixels.shape), "budget_ms": round(float(budget_ms), 3)}
    if padding:
        fields["padding"] = int(padding)
    header = json.dumps(fields).encode()
    return _LENGTH.pack(len(header)) + header + np.ascontiguousarray(pixels).tobytes() + bytes(padding)


def frame_seq(data: bytes) -> int | None:
    """The `seq` of a frame message whose header is JSON with a valid `seq`, even if the rest of
    it is not valid: an error about the frame then answers it (a client matches answers by seq,
    and one without would leave the frame in flight for good)."""
    if len(data) < _LENGTH.size:
        return None
    (header_length,) = _LENGTH.unpack_from(data)
    if not 2 <= header_length <= MAX_HEADER_BYTES or _LENGTH.size + header_length > len(data):
        return None
    try:
        seq = json.loads(data[_LENGTH.size : _LENGTH.size + header_length]).get("seq")
    except (ValueError, AttributeError, RecursionError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None


def decode_frame(data: bytes, *, channels: int, max_side_px: int) -> tuple[FrameHeader, np.ndarray]:
    """Split and check one binary frame message; ProtocolError names what is wrong."""
    if len(data) < _LENGTH.size:
        raise ProtocolError("a frame message starts with a 4-byte big-endian header length")
    (header_length,) = _LENGTH.unpack_from(data)
    if not 2 <= header_length <= MAX_HEADER_BYTES or _LENGTH.size + header_length > len(data):
        raise ProtocolError(f"frame header length {header_length} is outside 2..{MAX_HEADER_BYTES} or beyond the message")
    try:
        header = FrameHeader.model_validate_json(data[_LENGTH.size : _LENGTH.size + header_length])
    except ValidationError as error:
        raise ProtocolError(f"frame header: {_describe(error)}", frame_seq(data)) from None
    c, height, width = header.shape
    if c != channels or height != width or not 1 <= height <= max_side_px:
        raise ProtocolError(f"frame {header.seq}: 'shape' must be [{channels}, S, S] with 1 <= S <= {max_side_px}, got {list(header.shape)}", header.seq)
    payload = memoryview(data)[_LENGTH.size + header_length :]
    pixel_bytes = c * height * width
    if len(payload) != pixel_bytes + header.padding:
        raise ProtocolError(
            f"frame {header.seq}: {len(payload)} bytes after the header, but shape {list(header.shape)} and padding {header.padding} need {pixel_bytes + header.padding}",
            header.seq,
        )
    return header, np.frombuffer(payload[:pixel_bytes], dtype=np.uint8).reshape(header.shape)


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))
