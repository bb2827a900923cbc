"""Edge sessions and their controller: who is streaming, what each is told, and serving frames.

Every `interval_s`, on every registration or departure, and whenever a client's reported
bandwidth moved by more than `replan_change` of what the last plan assumed, the manager builds
an edge instance from the live sessions (`shoal.planner.edge.live`), asks the edge policy for a
plan (`shoal.planner.edge.plan_edge`), loads the variants the plan needs (the runtime's model
cache) and pushes a new assignment to each client whose assignment changed. Frames are served
through `InferenceService.infer`, so admission, deadline dropping, batching and metrics are
the same as for any other request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoal.core.models import Device, Profile
from shoal.planner.edge import EdgeClient, EdgeWorker
from shoal.planner.edge.live import (
    ClientInstruction,
    LadderStep,
    LiveVariant,
    build_edge_instance,
    fallback_ladder,
    instructions_from_plan,
    needs_replan,
)
from shoal.runtime.edge.planner_process import PlannerProcess
from shoal.runtime.edge.protocol import FrameHeader, ProtocolError, Register, Report
from shoal.runtime.errors import DeadlineExceededError, OverloadedError, ServingError
from shoal.runtime.supervisor import Heartbeat
from shoal.runtime.service import InferenceService

__all__ = ["EdgeSession", "EdgeSessionManager", "assignment_message"]

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class EdgeSession:
    name: str
    family: str
    slo_ms: float
    fps: float
    bandwidth_mbps: float
    rtt_ms: float
    pinned_variant: str | None
    send: Send
    per_query: bool = False
    instruction: ClientInstruction | None = None
    _outbox: dict[str, Any] | None = field(default=None, repr=False)
    _posted: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def post(self, message: dict[str, Any]) -> None:
        """Leave `message` for the session's own sender (`deliver`), replacing one it has not sent
        yet. The planning loop serves every session and must never wait on one client's socket:
        a client that stops reading (its buffers full) held every other session's re-plan for as
        long as it stayed connected."""
        self._outbox = message
        self._posted.set()

    async def deliver(self) -> None:
        """Send what `post` leaves, the latest only, until cancelled or the socket fails; run by
        the session's connection."""
        while True:
            await self._posted.wait()
            self._posted.clear()
            message, self._outbox = self._outbox, None
            if message is not None:
                await self.send(message)

    def live(self) -> EdgeClient:
        current = self.instruction.variant if self.instruction else None
        return EdgeClient(self.name, self.slo_ms, self.fps, self.bandwidth_mbps, self.rtt_ms, current)


@dataclass
class _FamilyState:
    """What the last plan of one family assumed and decided."""

    planned_mbps: dict[str, float] = field(default_factory=dict)
    worker_variants: dict[str, str | None] = field(default_factory=dict)


class EdgeSessionManager:
    MIN_REPLAN_GAP_S = 0.05
    """An early plan (a session came or left, a bandwidth jumped) waits this long for what else
    arrives, so that reports cannot make the planner re-plan every session back to back."""

    def __init__(
        self,
        service: InferenceService,
        *,
        policy: str = "shoal",
        interval_s: float = 0.5,
        replan_change: float = 0.3,
        latency_percentile: str = "p95",
    ):
        self.service = service
        self.policy = policy
        self.interval_s = interval_s
        self.replan_change = replan_change
        self.latency_percentile = latency_percentile
        self.sessions: dict[str, EdgeSession] = {}
        self._families: dict[str, _FamilyState] = {}
        self._wake = asyncio.Event()
        self._overhead_ms: collections.deque[float] = collections.deque(maxlen=256)
        self._profiles: dict[str, Profile | None] = {}
        self._planner = PlannerProcess()  # its process starts with the first plan (a session arrived)

    # -- sessions -------------------------------------------------------------------------------
    def register(self, request: Register, send: Send) -> tuple[EdgeSession, list[LadderStep]]:
        family, served = self.service.resolve(request.pin_variant or request.model)
        if request.pin_variant is None and served is not None:
            raise ProtocolError(f"field 'model': {request.model!r} is one variant; register with the family {family.name!r}, or pin_variant")
        if request.pin_variant is not None and served is None:
            raise ProtocolError(f"field 'pin_variant': {request.pin_variant!r} is a family; pin one of its variants, <family>.<variant>")
        if request.pin_variant is not None and family.name != self.service.resolve(request.model)[0].name:
            raise ProtocolError(f"field 'pin_variant': {request.pin_variant!r} is not a variant of {request.model!r}")
        if request.client in self.sessions:
            raise ProtocolError(f"field 'client': a session named {request.client!r} is already open; pick a unique name")
        if request.pin_variant is not None and request.selection == "per_query":
            raise ProtocolError("field 'selection': 'per_query' and pin_variant exclude each other")
        session = EdgeSession(
            request.client, family.name, request.slo_ms, request.fps, request.bandwidth_mbps, request.rtt_ms, request.pin_variant, send,
            per_query=request.selection == "per_query",
        )
        session.instruction = self._fixed_instruction(session)
        ladder = fallback_ladder(self._live_variants(family.name), self.server_overhead_ms)
        self.sessions[session.name] = session  # last: nothing above left a session behind when it raised
        self._wake.set()
        return session, ladder

    def _fixed_instruction(self, session: EdgeSession) -> ClientInstruction | None:
        """What a session the planner does not assign is told while it can be served: its
        pinned variant, or per-query selection by the family's policy (None: a planned session)."""
        if session.pinned_variant:
            variant = self.service.variants[session.pinned_variant]
            return ClientInstruction(variant.key, variant.variant.input_size_px, 0.0, True, "pinned")
        if session.per_query:
            return ClientInstruction(session.family, self.service.families[session.family].source_image_px, 0.0, True, "per query")
        return None

    def unregister(self, session: EdgeSession) -> None:
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]
            self._wake.set()

    def report(self, session: EdgeSession, report: Report) -> None:
        session.bandwidth_mbps = report.bandwidth_mbps
        if report.rtt_ms is not None:  # a report without it keeps the last one (it read as 0 ms)
            session.rtt_ms = report.rtt_ms
        # Only a session a plan was made with can make it stale. A pinned or per-query session is
        # in none (and a family with no variant to plan with has none): comparing against no
        # plan woke the planner on each of their reports, four times a second per client.
        planned = self._families.get(session.family, _FamilyState()).planned_mbps
        if session.name in planned and needs_replan({session.name: planned[session.name]}, {session.name: report.bandwidth_mbps}, self.replan_change):
            self._wake.set()

    # -- frames ---------------------------------------------------------------------------------
    async def serve_frame(self, session: EdgeSession, header: FrameHeader, pixels: np.ndarray) -> dict[str, Any]:
        """One frame to one answer: a result, a drop with its reason, or an error."""
        received = time.perf_counter()
        if header.budget_ms <= 0:
            return {"type": "dropped", "seq": header.seq, "reason": "no time left for the server (budget_ms <= 0)"}
        # What is left of the session's SLO cannot exceed the SLO: a larger budget would queue
        # the frame ahead of other sessions' on a deadline the session never registered.
        budget_ms = min(header.budget_ms, session.slo_ms)
        instruction = session.instruction
        side = pixels.shape[-1]
        if session.pinned_variant:
            model = session.pinned_variant
        elif session.per_query:
            model = session.family
        elif instruction is not None and instruction.input_size_px == side:
            model = instruction.variant
        else:
            model = session.family  # a backed-off or stale size: the family policy picks a variant that takes it
        family = self.service.families[session.family]
        try:
            result = await self.service.infer(model, {family.input_name: pixels[None]}, {"slo_ms": budget_ms}, [])
        except (DeadlineExceededError, OverloadedError) as error:  # too late now, or admission says it will be
            return {"type": "dropped", "seq": header.seq, "reason": error.message}
        except ServingError as error:
            return {"type": "error", "seq": header.seq, "message": error.message}
        parameters = result.parameters
        total_ms = (time.perf_counter() - received) * 1000.0
        self._overhead_ms.append(max(0.0, total_ms - parameters["shoal_queue_ms"] - parameters["shoal_compute_ms"]))
        latest = session.instruction or instruction
        message = {
            "type": "result",
            "seq": header.seq,
            "class": int(np.argmax(result.outputs[0])),
            "variant": parameters["shoal_variant"],
            "server_ms": round(total_ms, 3),
            "queue_ms": parameters["shoal_queue_ms"],
            "compute_ms": parameters["shoal_compute_ms"],
            "batch_size": parameters["shoal_batch_size"],
        }
        if latest is not None:
            message["next"] = {"variant": latest.variant, "input_size": latest.input_size_px}
        return message

    # -- planning -------------------------------------------------------------------------------
    @property
    def server_overhead_ms(self) -> float:
        """Time a frame spends in the server outside its queue and its batch (p90 of recent
        frames): decoding, pre-processing, dispatch. 2 ms until frames were measured."""
        if len(self._overhead_ms) < 10:
            return 2.0
        return float(np.percentile(self._overhead_ms, 90))

    def _live_variants(self, family: str) -> list[LiveVariant]:
        device = Device.parse(self.service.config.device)
        variants = []
        for key, served in self.service.variants.items():
            if served.family.name != family or key in self.service.operator_unloaded:
                continue  # an operator's unload holds until an explicit load, as for the controller
            if key not in self._profiles:  # the stored profile, read once; else the worker's warm-up
                self._profiles[key] = self.service.repository.load_profile(family, served.variant.name, device)
            profile = self._profiles[key] or served.latency
            if profile is None or not profile.batches:
                continue  # neither profiled nor loaded yet: the planner cannot predict it
            variants.append(
                LiveVariant(
                    key=key,
                    accuracy=served.variant.accuracy or 0.0,
                    input_size_px=served.variant.input_size_px,
                    channels=served.family.input_channels,
                    latency_ms=profile.monotone_latency_ms(self.latency_percentile),
                    load_ms=profile.load_time_ms or 0.0,
                )
            )
        return variants

    async def replan(self) -> None:
        by_family: dict[str, list[EdgeSession]] = {}
        for session in self.sessions.values():
            if session.pinned_variant is None and not session.per_query:
                by_family.setdefault(session.family, []).append(session)
            else:
                self._check_fixed(session)
        for family in set(self._families) - set(by_family):
            # Its last planned session left: a later one with a departed client's name must not
            # be compared with that client's bandwidth, nor planned with its workers' variants.
            del self._families[family]
        for family, sessions in by_family.items():
            await self._replan_family(family, sessions)

    def _check_fixed(self, session: EdgeSession) -> None:
        """A pinned or per-query session is not planned, but it is told when what it uses is
        gone (an operator unloaded its pinned variant, or every variant of its family) and again
        when it is back, as planned sessions are."""
        if session.pinned_variant:
            usable = session.pinned_variant not in self.service.operator_unloaded
            missing = f"variant {session.pinned_variant!r} was unloaded by an operator; load it with POST /v2/repository/models/{session.pinned_variant}/load"
        else:
            usable = bool(self._live_variants(session.family))
            missing = _no_variant_reason(session.family)
        served = session.instruction is not None and session.instruction.served
        if usable and not served:
            session.instruction = self._fixed_instruction(session)
            logger.info("edge: %s served again", session.name)
            session.post(assignment_message(session.instruction))
        elif not usable and served:
            _tell_unserved(session, missing)

    async def _replan_family(self, family: str, sessions: list[EdgeSession]) -> None:
        state = self._families.setdefault(family, _FamilyState())
        variants = self._live_variants(family)
        if not variants:
            self._tell_family_unserved(family, sessions)
            return
        live = {variant.key for variant in variants}
        loaded = tuple(key for key in self.service.variants if key in live and self.service.scheduler.workers_for(key))
        # A worker's last planned variant may have left the plannable ones since (an operator
        # unloaded it): the planner then sees that worker as holding nothing it may plan with.
        workers = [
            EdgeWorker(name, self.service.config.device, current if (current := state.worker_variants.get(name)) in live else None, loaded)
            for name in sorted(self.service.manager.workers)
        ]
        overhead_ms = self.server_overhead_ms
        planned_with = [s.live() for s in sessions]
        instance = build_edge_instance(variants, workers, planned_with, server_overhead_ms=overhead_ms, plan_interval_ms=self.interval_s * 1000.0)
        plan = await self._planner.plan(instance, self.policy)
        if {decision.variant for decision in plan.workers.values()} & self.service.operator_unloaded:
            # An operator unloaded a planned variant while this plan was made: acting on it would
            # load that variant back. Plan again at once, without it.
            self._wake.set()
            return
        # The bandwidths the plan was made with: a report that came while it was made is compared
        # with these, and wakes the planner again if it moved (it was taken as planned for).
        state.planned_mbps = {client.name: client.bandwidth_mbps for client in planned_with}
        state.worker_variants = {name: decision.variant for name, decision in plan.workers.items()}
        for key in {decision.variant for decision in plan.workers.values() if decision.variant}:
            if not self.service.scheduler.workers_for(key):
                # Served once one worker holds it: the sessions switch then, the rest load behind.
                await self.service.manager.ensure_loaded(self.service.variants[key], first_only=True)
        instructions = instructions_from_plan(plan, variants, overhead_ms)
        for session in sessions:
            instruction = instructions.get(session.name)
            if instruction is None or _same(instruction, session.instruction):
                continue
            changed_variant = session.instruction is None or session.instruction.variant != instruction.variant
            session.instruction = instruction
            if changed_variant or not instruction.served:
                logger.info("edge: %s -> %s at %d px (%s)", session.name, instruction.variant, instruction.input_size_px, instruction.reason or "planned")
            session.post(assignment_message(instruction))

    def _tell_family_unserved(self, family: str, sessions: list[EdgeSession]) -> None:
        """No variant of `family` can be planned (an operator unloaded them all, or none is
        profiled): each session that was served is told so, once, keeping its last variant and
        size for its own back-off. Before, such sessions kept a served assignment whose frames
        could only fail."""
        for session in sessions:
            # Not one never assigned (its client falls back to its ladder), nor one told already.
            if session.instruction is not None and session.instruction.served:
                _tell_unserved(session, _no_variant_reason(family))

    def close(self) -> None:
        """Stop the planner process (the server is shutting down)."""
        self._planner.stop()

    async def run(self, heartbeat: Heartbeat | None = None) -> None:
        """Plan every interval, and at once when a session arrives, leaves or its bandwidth jumps;
        `heartbeat` (from the server's supervisor) is touched after each plan."""
        while True:
            if heartbeat is not None:
                heartbeat.beat()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
            else:
                # Woken early (a session came, left, or its bandwidth jumped): let what else
                # arrives meanwhile join this plan. Without a gap, a client alternating its
                # reported bandwidth every 10 ms re-planned everyone's assignments each time.
                await asyncio.sleep(min(self.MIN_REPLAN_GAP_S, self.interval_s))
            self._wake.clear()
            try:
                await self.replan()
            except Exception:  # a failed plan is logged and retried at the next tick
                logger.exception("edge planning failed")


def _tell_unserved(session: EdgeSession, reason: str) -> None:
    """The session's assignment, unserved now for `reason`: its last variant and size, kept for
    its client's own back-off."""
    last = session.instruction
    session.instruction = ClientInstruction(last.variant, last.input_size_px, last.server_ms, False, reason)
    logger.info("edge: %s unserved (%s)", session.name, reason)
    session.post(assignment_message(session.instruction))


def _no_variant_reason(family: str) -> str:
    return (f"no variant of family {family!r} is loaded and profiled (an operator may have unloaded them); "
            f"load one with POST /v2/repository/models/{family}/load")  # fmt: skip


def _same(new: ClientInstruction, old: ClientInstruction | None) -> bool:
    """Equal but for a server-time prediction that moved less than 20% (not worth a message)."""
    if old is None or (new.variant, new.input_size_px, new.served) != (old.variant, old.input_size_px, old.served):
        return False
    return abs(new.server_ms - old.server_ms) <= 0.2 * max(old.server_ms, 1.0)


def assignment_message(instruction: ClientInstruction) -> dict[str, Any]:
    return {
        "type": "assignment",
        "variant": instruction.variant,
        "input_size": instruction.input_size_px,
        "server_ms": round(instruction.server_ms, 3),
        "served": instruction.served,
        "reason": instruction.reason,
    }


