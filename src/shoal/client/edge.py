"""The edge client daemon: stream frames to a shoal server at the size it is told, adaptively.

    client = EdgeClient(EdgeClientConfig("cam-1", "ws://127.0.0.1:8000", "demo", slo_ms=100, fps=15,
                                         initial_bandwidth_mbps=10), uplink=EmulatedLink(load_trace("lte")))
    records = await client.run(frames, duration_s=60)

Each frame is captured at the frame rate, resized (area averaging, as the server and the
profiler do) to the input size of the latest assignment and sent over the session
(`shoal.runtime.edge.protocol`). The client estimates its own upload bandwidth from the
server's acknowledgements (`shoal.client.bandwidth`) and reports it; the server re-plans and
pushes new assignments. Between plans the client backs off on its own: if its estimate says the
assigned size would miss the SLO (link backlog + upload + round trip + the server's predicted
time), it steps down the ladder of input sizes the server offered, and skips the frame when
even the smallest would be late. A skipped frame counts as a miss, never as silently lost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import websockets

from shoal.client.bandwidth import BandwidthEstimator, frame_to_send
from shoal.client.network import EmulatedLink
from shoal.planner.edge.backoff import SizeChoice, choose_input_size
from shoal.planner.edge.live import LadderStep
from shoal.runtime.edge.protocol import EDGE_PATH, MAX_BUDGET_MS, MAX_HEADER_BYTES, MAX_PADDING_BYTES, encode_frame
from shoal.zoo.preprocess import resize_images

__all__ = ["MAX_FRAME_BYTES", "EdgeClient", "EdgeClientConfig", "FrameRecord", "Outcome", "SessionClosed", "SessionRefused"]

Outcome = Literal["on_time", "late", "dropped", "skipped", "error", "unanswered"]

MAX_FRAME_BYTES = MAX_PADDING_BYTES - MAX_HEADER_BYTES - 4
"""A frame's pixels and probe padding together, so that the whole message stays within what the
server takes (its padding and message limits)."""


class SessionRefused(RuntimeError):
    """The server refused the registration; the message says why."""


class SessionClosed(RuntimeError):
    """The server closed the session while frames were still to be sent; the frames recorded
    so far are in `EdgeClient.records`, those in flight with the reason."""


@dataclass(frozen=True)
class EdgeClientConfig:
    name: str
    url: str
    """Server base URL: ws://host:port (http:// is accepted and rewritten)."""
    model: str
    """The family to stream to."""
    slo_ms: float
    fps: float
    initial_bandwidth_mbps: float
    pin_variant: str | None = None
    """`<family>.<variant>`: always this variant at its own input size (a static baseline)."""
    report_interval_s: float = 0.25
    ping_interval_s: float = 1.0
    safety_margin_ms: float = 2.0
    selection: str = "plan"
    """`plan` (the edge planner assigns sizes) or `per_query` (full frames, the server picks a
    variant per frame; INFaaS-style, no data adaptation)."""
    local_backoff: bool = True
    """Step down to a smaller size between plans when the own estimate says the assigned one
    would be late (off: follow the plan only, as Jellyfish's clients do)."""


@dataclass
class FrameRecord:
    seq: int
    captured_s: float
    """Relative to the start of the run."""
    input_size: int
    label: int | None
    estimate_mbps: float
    link_mbps: float | None
    variant: str | None = None
    outcome: Outcome = "unanswered"
    latency_ms: float | None = None
    correct: bool | None = None
    reason: str = ""


@dataclass
class _Assignment:
    variant: str | None
    input_size: int
    server_ms: float
    served: bool = True


@dataclass
class _InFlight:
    record: FrameRecord
    size_bytes: int
    queued_s: float


@dataclass
class _State:
    assignment: _Assignment | None = None
    ladder: list[LadderStep] = field(default_factory=list)
    in_flight: dict[int, _InFlight] = field(default_factory=dict)
    assignments: list[tuple[float, str | None, int]] = field(default_factory=list)
    """(time.monotonic() on arrival, variant, input size) for every assignment received."""


class EdgeClient:
    def __init__(
        self,
        config: EdgeClientConfig,
        *,
        uplink: EmulatedLink | None = None,
        downlink_propagation_ms: float | None = None,
        on_record: Callable[[FrameRecord], None] | None = None,
    ):
        self.config = config
        self.uplink = uplink
        self.downlink_propagation_ms = (uplink.propagation_ms if uplink else 0.0) if downlink_propagation_ms is None else downlink_propagation_ms
        self.estimator = BandwidthEstimator(config.initial_bandwidth_mbps)
        self.on_record = on_record
        self.records: list[FrameRecord] = []
        self.state = _State()
        self._started_s = 0.0
        self._ping_id = 0
        self._ping_sent: tuple[int | None, float] = (None, 0.0)

    # -- public ---------------------------------------------------------------------------------
    @property
    def assignments(self) -> list[tuple[float, str | None, int]]:
        return self.state.assignments

    async def run(self, frames: Iterator[tuple[np.ndarray, int | None]], *, duration_s: float) -> list[FrameRecord]:
        """Stream frames (CHW uint8 at full resolution, optional label) for `duration_s`."""
        url = self.config.url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/") + EDGE_PATH
        async with websockets.connect(url, max_size=2**24, open_timeout=10) as socket:
            self._started_s = time.monotonic()
            await self._send_text(socket, self._register_message())
            await self._await_registration(socket)
            receiver = asyncio.create_task(self._receive(socket))
            senders: set[asyncio.Task] = set()
            sidecar = None
            try:
                await self._measure_rtt(socket)
                sidecar = asyncio.create_task(self._report_and_ping(socket))
                self._started_s = time.monotonic()  # frame times count from the first frame
                if self.uplink is not None:
                    self.uplink.restart(self._started_s)  # and so does the trace (see EmulatedLink.restart)
                stream = asyncio.create_task(self._stream(socket, frames, duration_s, senders))
                # The receiver ends when the server closes the socket: streaming on would only
                # record every later frame as skipped (no acks, so the estimate falls to zero).
                await asyncio.wait({stream, receiver}, return_when=asyncio.FIRST_COMPLETED)
                cut_short = not stream.done()
                if cut_short:
                    stream.cancel()
                    await asyncio.gather(stream, return_exceptions=True)
                else:
                    stream.result()
                    await self._drain(receiver)
                # A close after every frame was sent and answered ends nothing early.
                closed = _close_reason(socket, receiver) if receiver.done() and (cut_short or self.state.in_flight) else None
            finally:
                if sidecar is not None:
                    sidecar.cancel()
                receiver.cancel()
                for task in senders:
                    task.cancel()
        for flight in self.state.in_flight.values():
            flight.record.reason = f"no answer: {closed}" if closed else "no answer before the session ended"
            self._finish(flight.record)
        self.state.in_flight.clear()
        if closed:
            raise SessionClosed(closed)
        return self.records

    # -- session --------------------------------------------------------------------------------
    def _register_message(self) -> dict:
        return {
            "type": "register",
            "client": self.config.name,
            "model": self.config.model,
            "slo_ms": self.config.slo_ms,
            "fps": self.config.fps,
            "bandwidth_mbps": self.config.initial_bandwidth_mbps,
            "rtt_ms": 2 * (self.uplink.propagation_ms if self.uplink else 0.0),
            "pin_variant": self.config.pin_variant,
            "selection": self.config.selection,
        }

    async def _await_registration(self, socket) -> None:
        deadline = time.monotonic() + 10.0
        while self.state.assignment is None and time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(socket.recv(), timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            message = json.loads(raw)
            if message["type"] == "error":
                raise SessionRefused(message["message"])
            if message["type"] == "registered":
                self.state.ladder = [LadderStep(s["input_size"], s["variant"], s["accuracy"], s["server_ms"]) for s in message["ladder"]]
            elif message["type"] == "assignment":
                self._on_assignment(message)
        if self.state.assignment is None:
            if not self.state.ladder:
                raise SessionRefused("the server sent neither a ladder nor an assignment within 10 s")
            smallest = min(self.state.ladder, key=lambda step: step.input_size_px)
            self.state.assignment = _Assignment(smallest.variant, smallest.input_size_px, smallest.server_ms, False)

    def _on_assignment(self, message: dict) -> None:
        self.state.assignment = _Assignment(message["variant"], message["input_size"], message["server_ms"], message["served"])
        # Seconds into the run, as the simulator records them (not the machine's uptime).
        self.state.assignments.append((time.monotonic() - self._started_s, message["variant"], message["input_size"]))

    async def _send_text(self, socket, message: dict) -> None:
        data = json.dumps(message)
        if self.uplink is not None:
            await self.uplink.transmit(len(data))
        await socket.send(data)

    async def _ping(self, socket) -> None:
        self._ping_id += 1
        self._ping_sent = (self._ping_id, time.monotonic())
        await self._send_text(socket, {"type": "ping", "id": self._ping_id})

    async def _measure_rtt(self, socket, pings: int = 3) -> None:
        """A few round trips on the idle link before streaming, so the first acks can be timed."""
        for _ in range(pings):
            seen = self.estimator.rtt_samples
            await self._ping(socket)
            deadline = time.monotonic() + 1.0
            while self.estimator.rtt_samples == seen and time.monotonic() < deadline:
                await asyncio.sleep(0.002)

    async def _report_and_ping(self, socket) -> None:
        next_ping = 0.0
        while True:
            now = time.monotonic()
            # A ping queued behind our own frames would time the queue, not the path: ping only
            # when the uplink holds nothing of ours (a real client reads its socket's send queue).
            if now >= next_ping and (self.uplink is None or self.uplink.backlog_ms(now) == 0.0):
                await self._ping(socket)
                next_ping = now + self.config.ping_interval_s
            estimate = self.estimator.estimate_mbps(time.monotonic())
            await self._send_text(socket, {"type": "report", "bandwidth_mbps": round(estimate, 4), "rtt_ms": round(self.estimator.min_rtt_ms, 3)})
            await asyncio.sleep(self.config.report_interval_s)

    async def _receive(self, socket) -> None:
        async for raw in socket:
            now = time.monotonic() + self.downlink_propagation_ms / 1000.0
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "ack":
                flight = self.state.in_flight.get(message["seq"])
                if flight is not None:
                    self.estimator.on_ack(flight.size_bytes, flight.queued_s, now)
            elif kind == "pong":
                ping_id, sent = self._ping_sent
                if message.get("id") == ping_id:
                    self.estimator.on_rtt((now - sent) * 1000.0)
            elif kind == "assignment":
                self._on_assignment(message)
            elif kind in ("result", "dropped", "error") and "seq" in message:
                flight = self.state.in_flight.pop(message["seq"], None)
                if flight is None:
                    continue
                self.estimator.forget(flight.queued_s)
                record = flight.record
                if kind == "result":
                    record.latency_ms = (now - self._started_s - record.captured_s) * 1000.0
                    record.variant = message["variant"]
                    record.outcome = "on_time" if record.latency_ms <= self.config.slo_ms else "late"
                    if record.label is not None:
                        record.correct = message["class"] == record.label
                    if "next" in message and self.state.assignment is not None:
                        upcoming = message["next"]
                        if (upcoming["variant"], upcoming["input_size"]) != (self.state.assignment.variant, self.state.assignment.input_size):
                            self.state.assignment = _Assignment(upcoming["variant"], upcoming["input_size"], self.state.assignment.server_ms)
                else:
                    record.outcome = "dropped" if kind == "dropped" else "error"
                    record.reason = message.get("reason") or message.get("message", "")
                self._finish(record)

    async def _drain(self, receiver: asyncio.Task) -> None:
        """Wait for the answers still in flight, at most two SLOs."""
        deadline = time.monotonic() + 2 * self.config.slo_ms / 1000.0 + 0.5
        while self.state.in_flight and time.monotonic() < deadline and not receiver.done():
            await asyncio.sleep(0.01)

    def _finish(self, record: FrameRecord) -> None:
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    # -- frames ---------------------------------------------------------------------------------
    def _choose_size(self, now: float, captured_s: float) -> SizeChoice:
        assignment = self.state.assignment
        assert assignment is not None
        return choose_input_size(
            assigned_size_px=assignment.input_size,
            assigned_server_ms=assignment.server_ms,
            ladder=self.state.ladder,
            estimate_mbps=self.estimator.estimate_mbps(now),
            queued_bits=self.uplink.queued_bits(now) if self.uplink else 0.0,
            min_rtt_ms=self.estimator.min_rtt_ms,
            age_ms=max(0.0, now - captured_s) * 1000.0,
            slo_ms=self.config.slo_ms,
            safety_margin_ms=self.config.safety_margin_ms,
            pinned=self.config.pin_variant is not None or self.config.selection == "per_query" or not self.config.local_backoff,
        )

    async def _stream(self, socket, frames: Iterator[tuple[np.ndarray, int | None]], duration_s: float, senders: set) -> None:
        period = 1.0 / self.config.fps
        seq = 0
        while True:
            target = self._started_s + seq * period
            if target - self._started_s >= duration_s:
                return
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            image, label = next(frames)
            now = time.monotonic()
            choice = self._choose_size(now, target)
            size, upload_ms, slack_ms = choice.input_size_px, choice.upload_ms, choice.slack_ms
            record = FrameRecord(
                seq,
                target - self._started_s,
                size,
                None if label is None else int(label),
                self.estimator.estimate_mbps(now),
                self.uplink.bandwidth_mbps(now) if self.uplink else None,
            )
            seq += 1
            send = frame_to_send(
                self.estimator, chosen_size_px=size, chosen_upload_ms=upload_ms, slack_ms=slack_ms,
                smallest_size_px=min(step.input_size_px for step in self.state.ladder),
                frame_bytes=lambda size_px: image.size // (image.shape[-2] * image.shape[-1]) * size_px * size_px,
                estimate_mbps=record.estimate_mbps, adaptive=self.config.pin_variant is None and self.config.selection == "plan",
                now_s=now, max_message_bytes=MAX_FRAME_BYTES,
            )  # fmt: skip
            size, upload_ms, padding = send.input_size_px, send.upload_ms, send.padding_bytes
            if send.link_probe:
                # Sent anyway, at the smallest size: its acknowledgement times the link. (Its
                # budget counts its upload at the estimate: the server drops it if that is late.)
                record.input_size = size
                record.reason = "sent to measure the link: no input size met the SLO at the estimated bandwidth"
            if size == 0:
                record.outcome, record.reason = "skipped", "no input size would meet the SLO at the estimated bandwidth"
                self._finish(record)
                continue
            pixels = _resize_uint8(image, size)
            age_ms = (now - target) * 1000.0
            # Within what the protocol takes: a budget long past zero is dropped all the same.
            budget_ms = min(max(self.config.slo_ms - age_ms - upload_ms - self.estimator.min_rtt_ms, -MAX_BUDGET_MS), MAX_BUDGET_MS)
            data = encode_frame(record.seq, pixels, budget_ms, padding)
            self.state.in_flight[record.seq] = _InFlight(record, len(data), now)
            self.estimator.on_send(len(data), now)
            arrival = self.uplink.reserve(len(data), now) if self.uplink else now
            task = asyncio.create_task(self._deliver(socket, data, arrival))
            senders.add(task)
            task.add_done_callback(senders.discard)

    async def _deliver(self, socket, data: bytes, arrival_s: float) -> None:
        delay = arrival_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await socket.send(data)
        except websockets.ConnectionClosed:
            pass  # the receiver ends with the socket, and `run` says why


def _close_reason(socket, receiver: asyncio.Task) -> str:
    """Why the session ended under the client, from the socket's close frame."""
    error = None if receiver.cancelled() else receiver.exception()
    code = getattr(socket, "close_code", None)
    reason = getattr(socket, "close_reason", "") or ""
    if code is None and error is not None:
        return f"the session failed ({error!r})"
    return f"the server closed the session (code {code}{': ' + reason if reason else ''})"


def _resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[-1] == size:
        return np.ascontiguousarray(image)
    resized = resize_images(image[None].astype(np.float32), size)[0]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
