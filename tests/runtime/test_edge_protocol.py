"""The edge session's wire format: frames round-trip, bad messages name what is wrong."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from shoal.runtime.edge.protocol import ProtocolError, Register, Report, decode_frame, encode_frame, frame_seq, parse_client_message


def test_frame_round_trip():
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 24, 24), dtype=np.uint8)
    header, decoded = decode_frame(encode_frame(7, pixels, 61.5), channels=3, max_side_px=128)
    assert header.seq == 7 and header.budget_ms == 61.5 and header.shape == (3, 24, 24)
    assert np.array_equal(decoded, pixels)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda data: data[:2], "4-byte big-endian header length"),
        (lambda data: struct.pack(">I", 10**6) + data[4:], "header length"),
        (lambda data: data[:-1], "bytes after the header"),
        (lambda data: _with_header(data, {"seq": 1, "shape": [3, 24, 20], "budget_ms": 5}), "'shape' must be"),
        (lambda data: _with_header(data, {"seq": 1, "shape": [1, 24, 24], "budget_ms": 5}), "'shape' must be"),
        (lambda data: _with_header(data, {"seq": -1, "shape": [3, 24, 24], "budget_ms": 5}), "'seq'"),
        (lambda data: _with_header(data, {"seq": 1, "shape": [3, 24, 24]}), "'budget_ms'"),
        (lambda data: struct.pack(">I", 5) + b"nojson" + data[4:], "frame header"),
    ],
)
def test_bad_frames_are_refused_with_the_reason(mutate, message):
    data = encode_frame(1, np.zeros((3, 24, 24), dtype=np.uint8), 50.0)
    with pytest.raises(ProtocolError, match=message):
        decode_frame(mutate(data), channels=3, max_side_px=128)


def test_frames_larger_than_the_family_source_are_refused():
    with pytest.raises(ProtocolError, match="1 <= S <= 16"):
        decode_frame(encode_frame(1, np.zeros((3, 24, 24), dtype=np.uint8), 50.0), channels=3, max_side_px=16)


def _with_header(data: bytes, header: dict) -> bytes:
    (length,) = struct.unpack_from(">I", data)
    encoded = json.dumps(header).encode()
    return struct.pack(">I", len(encoded)) + encoded + data[4 + length :]


def test_client_messages_parse_and_errors_name_the_field():
    register = parse_client_message(json.dumps({"type": "register", "client": "cam-1", "model": "demo", "slo_ms": 100, "fps": 15, "bandwidth_mbps": 8}))
    assert isinstance(register, Register) and register.pin_variant is None
    assert isinstance(parse_client_message('{"type": "report", "bandwidth_mbps": 3.5}'), Report)
    with pytest.raises(ProtocolError, match="'slo_ms'"):
        parse_client_message(json.dumps({"type": "register", "client": "c", "model": "demo", "slo_ms": -1, "fps": 15, "bandwidth_mbps": 8}))
    with pytest.raises(ProtocolError, match="'client'"):
        parse_client_message(json.dumps({"type": "register", "client": "../x", "model": "demo", "slo_ms": 1, "fps": 15, "bandwidth_mbps": 8}))
    with pytest.raises(ProtocolError, match="'colour'"):
        parse_client_message('{"type": "report", "bandwidth_mbps": 3.5, "colour": "red"}')
    with pytest.raises(ProtocolError, match="'type' must be one of"):
        parse_client_message('{"type": "hello"}')
    with pytest.raises(ProtocolError, match="JSON"):
        parse_client_message("{not json")
    with pytest.raises(ProtocolError, match="CHW uint8"):
        encode_frame(1, np.zeros((3, 4, 4), dtype=np.float32), 1.0)


@pytest.mark.parametrize("text", ['{"type": ["register"]}', '{"type": {"a": 1}}', "[" * 5000])
def test_a_message_of_an_odd_type_or_nesting_is_a_protocol_error(text):
    """An unhashable type failed the lookup with a TypeError, deep nesting with a RecursionError:
    either ended the session with a traceback instead of an error message."""
    with pytest.raises(ProtocolError):
        parse_client_message(text)


def test_an_error_about_a_frame_whose_header_fails_validation_still_names_its_seq():
    """The client matches answers by seq: an error without one left the frame in flight for
    good (and capped the client's bandwidth estimate with it)."""
    pixels = np.zeros((3, 8, 8), np.uint8)
    frame = encode_frame(41, pixels, budget_ms=-70_000)
    with pytest.raises(ProtocolError, match="budget_ms") as caught:
        decode_frame(frame, channels=3, max_side_px=64)
    assert caught.value.seq == 41
    assert frame_seq(frame) == 41 and frame_seq(b"\x00\x00\x00\x05[1,2]") is None and frame_seq(b"xx") is None


@pytest.mark.parametrize(
    "text",
    ['{"type": "report", "bandwidth_mbps": true}', '{"type": "report", "bandwidth_mbps": "12"}', '{"type": "ping", "id": true}'],
)
def test_a_number_sent_as_a_string_or_a_boolean_is_refused(text):
    """Coerced before ("12" -> 12.0, true -> 1): a client bug that passed as a value."""
    with pytest.raises(ProtocolError, match="Input should be a valid"):
        parse_client_message(text)


def test_a_text_message_longer_than_any_client_message_is_refused_unread():
    # A 16 MiB ping took the shared event loop 2.4 s to parse; every other session waited.
    from shoal.runtime.edge.protocol import MAX_TEXT_MESSAGE_CHARS

    ping = json.dumps({"type": "ping", "id": 1})
    assert parse_client_message(ping + " " * (MAX_TEXT_MESSAGE_CHARS - len(ping))).type == "ping"
    with pytest.raises(ProtocolError, match=f"longer than the {MAX_TEXT_MESSAGE_CHARS}"):
        parse_client_message('{"type": "ping", "id": [' + "[]," * MAX_TEXT_MESSAGE_CHARS + "[]]}")


def test_a_report_may_leave_out_its_round_trip_time():
    assert parse_client_message('{"type": "report", "bandwidth_mbps": 5}').rtt_ms is None


def test_frames_beyond_the_registered_rate_are_refused_but_jitter_passes():
    from shoal.runtime.edge.websocket import FrameAllowance

    one_fps = FrameAllowance(1.0, now_s=0.0)
    assert [one_fps.take(0.0) for _ in range(3)] == [True, True, False]  # a burst of two
    assert one_fps.take(0.5) is False and one_fps.take(0.9) is True  # then 1.25 a second
    streaming = FrameAllowance(15.0, now_s=0.0)
    sent = [streaming.take(t / 15.0 + (0.03 if t % 2 else 0.0)) for t in range(150)]  # 10 s at 15 fps, jittered
    assert all(sent)
    flood = FrameAllowance(1.0, now_s=0.0)
    assert sum(flood.take(t / 400.0) for t in range(400)) <= 4  # 400 frames in a second from a 1 fps session
