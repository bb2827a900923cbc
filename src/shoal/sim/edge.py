"""Simulated edge serving: clients on trace-shaped links, a dispatcher, batching workers, and
the controller, all in simulated time.

What is shared with the live system (so that what is simulated is what is served):

* the planners: `plan_edge` through `build_edge_instance` / `instructions_from_plan` /
  `fallback_ladder` / `needs_replan` (`shoal.planner.edge.live`), called with the same inputs
  the runtime's `EdgeSessionManager` builds;
* the client's decisions: `choose_input_size` (local back-off) and `BandwidthEstimator`
  (estimation from acknowledgements, probes);
* the network: `EmulatedLink` driven by the simulation clock;
* the batcher: `decide_batch` (deadline-aware dynamic batching) and `admission_finish_ms`.

What is modelled rather than run: a batch takes a latency drawn from the variant's measured
samples at that batch size; a frame is correct when its own uniform draw falls below the
serving variant's accuracy (one draw per client and frame, the same under every policy and
variant: common random numbers, so that two policies serving a frame with the same variant
agree on it, and a more accurate variant is right wherever a less accurate one is); the server adds a fixed `server_overhead_ms` (decode, dispatch) split before and
after the batch; acknowledgements and results cross the downlink in `propagation_ms`; a plan
reaches the clients after the time the planner took here, or after `SimSettings.planning_ms`
(when not fixed, the one source of run-to-run differences under one seed).
"""

from __future__ import annotations

import bisect
import collections
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from shoal.client.bandwidth import BandwidthEstimator, frame_to_send
from shoal.client.edge import MAX_FRAME_BYTES, FrameRecord
from shoal.client.network import EmulatedLink
from shoal.experiments.edge_serving import EdgeRun, EdgeScenario
from shoal.planner.batching import ADMITTED_WINDOW, admission_finish_ms, admitted_per_ms, decide_batch
from shoal.planner.edge import EdgeClient, EdgeWorker, plan_edge
from shoal.planner.edge.backoff import choose_input_size
from shoal.planner.edge.live import (
    ClientInstruction,
    LiveVariant,
    build_edge_instance,
    fallback_ladder,
    instructions_from_plan,
    needs_replan,
    raw_frame_kbits,
)
from shoal.sim.engine import Engine

__all__ = ["SimSettings", "SimVariant", "sim_variants_from_profiles", "simulate_edge"]


@dataclass(frozen=True)
class SimVariant:
    """A variant as the simulator sees it: the planner's view plus measured latency samples."""

    live: LiveVariant
    samples_ms: Mapping[int, Sequence[float]]
    """Batch size -> measured batch latencies (execution times are drawn from these)."""

    def draw_ms(self, batch_size: int, rng: random.Random) -> float:
        size, scale = _profiled_size(self.samples_ms, batch_size)
        return rng.choice(self.samples_ms[size]) * scale


@dataclass(frozen=True)
class SimSettings:
    workers: int = 1
    interval_s: float = 0.5
    replan_change: float = 0.3
    report_interval_s: float = 0.25
    server_overhead_ms: float = 1.5
    max_batch_size: int = 32
    admission_headroom: float = 0.8
    source_px: int = 128
    channels: int = 3
    seed: int = 0
    planning_ms: float | None = None
    """How long a plan takes to reach the clients, in simulated time, beside its propagation.
    None: as long as the planner took here (what the live controller's clients see, but it
    varies with this machine's load, so one seed can give different runs); a number: that,
    every plan, so that one seed gives one result."""


@dataclass
class _Client:
    name: str
    slo_ms: float
    fps: float
    link: EmulatedLink
    estimator: BandwidthEstimator
    mode: str  # plan | plan_no_backoff | per_query | pinned
    pinned: str | None
    instruction: ClientInstruction | None = None
    frame_draws: Sequence[float] = (0.5,)
    bandwidth_reported_mbps: float = 0.0
    records: list[FrameRecord] = field(default_factory=list)
    assignments: list[tuple[float, str | None, int]] = field(default_factory=list)

    @property
    def rtt_ms(self) -> float:
        return self.estimator.min_rtt_ms


Reply = Callable[[FrameRecord, str, "str | None", float, "bool | None"], None]
"""(record, "result" | "dropped", variant, delay_s before it leaves the server, correct)."""


@dataclass(order=True)
class _Item:
    deadline_s: float
    sequence: int
    client: _Client = field(compare=False)
    record: FrameRecord = field(compare=False)
    variant: str = field(compare=False)
    arrival_s: float = field(compare=False)
    reply: Reply = field(compare=False)


class _Server:
    def __init__(self, engine: Engine, variants: Sequence[SimVariant], settings: SimSettings, policy: str, rng: random.Random):
        self.engine = engine
        self.variants = {v.live.key: v for v in variants}
        self.live_variants = [v.live for v in variants]
        self.settings = settings
        self.policy = policy
        self.rng = rng
        self.queues: dict[str, list[_Item]] = {key: [] for key in self.variants}
        # per variant, when its last few frames were admitted (ms): how fast a waiting batch grows
        self.admitted_ms: dict[str, collections.deque[float]] = {key: collections.deque(maxlen=ADMITTED_WINDOW) for key in self.variants}
        self.worker_busy_until = [0.0] * settings.workers
        self.worker_busy_s = [0.0] * settings.workers
        self.worker_variants: dict[str, str | None] = {}
        self.planned_mbps: dict[str, float] = {}
        self.clients: dict[str, _Client] = {}
        self._sequence = 0
        self.plans = 0
        self._replan_pending = False
        self._planner_free_at_s = 0.0
        self.planning_wall_s = 0.0

    def request_replan(self, propagation_s: float, delay_s: float = 0.002) -> None:
        """Coalesce triggers as the runtime's controller does: one plan for a burst of reports,
        and never a new plan before the previous one has been computed."""
        if self._replan_pending:
            return
        self._replan_pending = True

        def run() -> None:
            self._replan_pending = False
            self.replan(propagation_s)

        self.engine.at(max(self.engine.now + delay_s, self._planner_free_at_s), run)

    # -- planning (the same inputs the runtime's EdgeSessionManager builds) ----------------------
    def replan(self, propagation_s: float, *, at_registration: bool = False) -> None:
        planned = [c for c in self.clients.values() if c.mode in ("plan", "plan_no_backoff")]
        if not planned:
            return
        names = [f"w{i}" for i in range(self.settings.workers)]  # the runtime's worker ids
        workers = [EdgeWorker(n, "cpu", self.worker_variants.get(n), tuple(self.variants)) for n in names]
        instance = build_edge_instance(
            self.live_variants,
            workers,
            [EdgeClient(c.name, c.slo_ms, c.fps, c.bandwidth_reported_mbps, c.rtt_ms, c.instruction.variant if c.instruction else None) for c in planned],
            server_overhead_ms=self.settings.server_overhead_ms,
            plan_interval_ms=self.settings.interval_s * 1000.0,
        )
        started = time.perf_counter()
        plan = plan_edge(instance, self.policy)  # type: ignore[arg-type]
        wall_s = time.perf_counter() - started
        self.planning_wall_s += wall_s
        # Unless told otherwise, planning takes as long in simulated time as it took here: its
        # decisions reach the clients that much later, as they would from the live controller.
        planning_s = wall_s if self.settings.planning_ms is None else self.settings.planning_ms / 1000.0
        self._planner_free_at_s = self.engine.now + planning_s
        self.plans += 1
        self.planned_mbps = {c.name: c.bandwidth_reported_mbps for c in planned}
        self.worker_variants = {name: decision.variant for name, decision in plan.workers.items()}
        for name, instruction in instructions_from_plan(plan, self.live_variants, self.settings.server_overhead_ms).items():
            client = self.clients[name]
            delay_s = 0.0 if at_registration else planning_s + propagation_s
            self.engine.after(delay_s, lambda client=client, instruction=instruction: _assign(client, instruction, self.engine.now))

    # -- frames ---------------------------------------------------------------------------------
    def receive(self, client: _Client, record: FrameRecord, size: int, budget_ms: float, reply: Reply) -> None:
        now = self.engine.now
        if budget_ms <= 0:
            reply(record, "dropped", None, 0.0, None)
            return
        variant = self._variant_for(client, size, budget_ms)
        if variant is None:
            reply(record, "dropped", None, 0.0, None)
            return
        deadline = now + budget_ms / 1000.0
        self._sequence += 1
        item = _Item(deadline, self._sequence, client, record, variant, now, reply)
        if self._predicted_finish_ms(variant, now, self._busy_ms(now)) > budget_ms * self.settings.admission_headroom:
            reply(record, "dropped", None, 0.0, None)
            return
        bisect.insort(self.queues[variant], item)
        self.admitted_ms[variant].append(now * 1000.0)
        self.engine.after(self.settings.server_overhead_ms / 2000.0, self._dispatch)

    def _variant_for(self, client: _Client, size: int, budget_ms: float) -> str | None:
        if client.pinned:
            return client.pinned
        if client.mode != "per_query" and client.instruction is not None and client.instruction.input_size_px == size:
            return client.instruction.variant
        # The family policy: the most accurate variant that takes this size and is predicted to
        # answer within the budget (queue ahead included).
        now = self.engine.now
        busy_ms = self._busy_ms(now)
        best = None
        for key, variant in self.variants.items():
            if variant.live.input_size_px > size:
                continue
            if self._predicted_finish_ms(key, now, busy_ms) <= budget_ms and (best is None or variant.live.accuracy > self.variants[best].live.accuracy):
                best = key
        return best

    def _busy_ms(self, now_s: float) -> list[float]:
        return [max(0.0, busy_until - now_s) * 1000.0 for busy_until in self.worker_busy_until]

    def _predicted_finish_ms(self, variant: str, now_s: float, busy_ms: Sequence[float]) -> float:
        """When a frame for `variant` admitted now would be answered, as the live server's
        admission predicts it (its overhead, the workers' busy times, the admitted rate)."""
        latency = self.variants[variant].live.latency_ms
        return self.settings.server_overhead_ms + admission_finish_ms(
            len(self.queues[variant]), busy_ms, lambda b: _table_ms(latency, b), self.settings.max_batch_size,
            arrivals_per_ms=admitted_per_ms(self.admitted_ms[variant], now_s * 1000.0),
        )

    def _dispatch(self) -> None:
        now = self.engine.now
        for worker, busy_until in enumerate(self.worker_busy_until):
            if busy_until > now + 1e-12:
                continue
            while True:
                key = min((k for k, q in self.queues.items() if q), key=lambda k: self.queues[k][0].deadline_s, default=None)
                if key is None:
                    return
                queue = self.queues[key]
                latency = self.variants[key].live.latency_ms
                decision = decide_batch(
                    [item.deadline_s * 1000.0 for item in queue[: self.settings.max_batch_size * 2]],
                    now * 1000.0,
                    lambda b: _table_ms(latency, b),
                    self.settings.max_batch_size,
                )
                for item in queue[: decision.num_expired]:
                    self._reply(item, "dropped", None)
                del queue[: decision.num_expired]
                if decision.batch_size == 0:
                    continue
                batch = queue[: decision.batch_size]
                del queue[: decision.batch_size]
                run_s = self.variants[key].draw_ms(len(batch), self.rng) / 1000.0
                self.worker_busy_until[worker] = now + run_s
                self.worker_busy_s[worker] += run_s
                self.engine.at(now + run_s, lambda batch=batch, key=key: self._finish(batch, key))
                break

    def _finish(self, batch: list[_Item], key: str) -> None:
        accuracy = self.variants[key].live.accuracy
        for item in batch:
            self._reply(item, "result", key, correct=item.client.frame_draws[item.record.seq % len(item.client.frame_draws)] < accuracy)
        self._dispatch()

    def _reply(self, item: _Item, kind: str, variant: str | None, correct: bool | None = None) -> None:
        item.reply(item.record, kind, variant, self.settings.server_overhead_ms / 2000.0, correct)


def _profiled_size(table: Mapping[int, object], batch_size: int) -> tuple[int, float]:
    """The smallest profiled batch size >= `batch_size`, and the factor to scale its latency
    by (linear beyond the largest profiled size)."""
    sizes = sorted(table)
    size = sizes[min(bisect.bisect_left(sizes, batch_size), len(sizes) - 1)]
    return size, (batch_size / size if batch_size > size else 1.0)


def _table_ms(table: Mapping[int, float], batch_size: int) -> float:
    size, scale = _profiled_size(table, batch_size)
    return table[size] * scale


def _assign(client: _Client, instruction: ClientInstruction, now: float) -> None:
    if client.instruction is None or (client.instruction.variant, client.instruction.input_size_px) != (instruction.variant, instruction.input_size_px):
        client.assignments.append((now, instruction.variant, instruction.input_size_px))
    client.instruction = instruction


def simulate_edge(
    scenario: EdgeScenario,
    variants: Sequence[SimVariant],
    setting: str,
    settings: SimSettings = SimSettings(),
) -> tuple[EdgeRun, dict]:
    """Simulate one setting (shoal, jellyfish, infaas, static:<variant>) on the scenario.

    Returns the same `EdgeRun` the live experiments produce (so summaries, plots and the report
    are shared) and engine statistics."""
    if not variants:
        raise ValueError("simulate_edge needs at least one variant")
    if not (math.isfinite(scenario.duration_s) and scenario.duration_s > 0):
        raise ValueError(f"duration_s {scenario.duration_s!r}: give a positive number of seconds to simulate")
    if settings.planning_ms is not None and not (math.isfinite(settings.planning_ms) and settings.planning_ms >= 0):
        raise ValueError(f"planning_ms {settings.planning_ms!r}: give a delay >= 0 in milliseconds, or None for the planner's own time")
    rng = random.Random(settings.seed)
    engine = Engine()
    policy = "jellyfish" if setting == "jellyfish" else "shoal"
    server = _Server(engine, variants, settings, policy, rng)
    propagation_s = scenario.propagation_ms / 1000.0
    ladder = fallback_ladder([v.live for v in variants], settings.server_overhead_ms)
    pinned = setting.split(":", 1)[1] if setting.startswith("static:") else None
    if pinned is not None and pinned not in server.variants:
        raise ValueError(f"setting {setting!r}: no variant {pinned!r} (known: {', '.join(server.variants)})")
    mode = {"shoal": "plan", "jellyfish": "plan_no_backoff", "infaas": "per_query"}.get(setting, "pinned")
    if mode == "pinned" and pinned is None:
        raise ValueError(f"setting {setting!r}: use shoal, jellyfish, infaas or static:<family>.<variant>")
    run = EdgeRun(setting, scenario)
    clients = []
    for index, offset in enumerate(scenario.offsets_s):
        link = EmulatedLink(scenario.trace, offset_s=offset, propagation_ms=scenario.propagation_ms, clock=engine.clock)
        estimator = BandwidthEstimator(link.bandwidth_mbps(0.0))
        estimator.on_rtt(2 * scenario.propagation_ms + settings.server_overhead_ms / 2)
        client = _Client(f"client-{index}", scenario.slo_ms, scenario.fps, link, estimator, mode, pinned)
        draws = random.Random(settings.seed * 1_000_003 + index)
        client.frame_draws = [draws.random() for _ in range(int(scenario.duration_s * scenario.fps) + 2)]
        client.bandwidth_reported_mbps = estimator.estimate_mbps(0.0)
        if pinned is not None:
            live = server.variants[pinned].live
            client.instruction = ClientInstruction(pinned, live.input_size_px, 0.0, True, "pinned")
        elif mode == "per_query":
            client.instruction = ClientInstruction(scenario.family, settings.source_px, 0.0, True, "per query")
        server.clients[client.name] = client
        clients.append(client)
    in_flight: dict[tuple[str, int], FrameRecord] = {}

    def deliver(client: _Client, record: FrameRecord, kind: str, variant: str | None, delay_s: float, correct: bool | None) -> None:
        def arrive() -> None:
            if in_flight.pop((client.name, record.seq), None) is None:
                return
            if kind == "result":
                record.latency_ms = (engine.now - record.captured_s) * 1000.0
                record.variant = variant
                record.outcome = "on_time" if record.latency_ms <= scenario.slo_ms else "late"
                record.correct = correct
            else:
                record.outcome = "dropped"
            client.records.append(record)

        engine.after(delay_s + propagation_s, arrive)

    def capture(client: _Client, seq: int) -> None:
        now = engine.now
        if now >= scenario.duration_s:
            return
        engine.at((seq + 1) / scenario.fps, lambda: capture(client, seq + 1))
        instruction = client.instruction
        if instruction is None:  # before the first plan: the smallest size
            step = ladder[0]
            instruction = ClientInstruction(step.variant, step.input_size_px, step.server_ms, False)
        estimate = client.estimator.estimate_mbps(now)
        choice = choose_input_size(
            assigned_size_px=instruction.input_size_px,
            assigned_server_ms=instruction.server_ms,
            ladder=ladder,
            estimate_mbps=estimate,
            queued_bits=client.link.queued_bits(now),
            min_rtt_ms=client.estimator.min_rtt_ms,
            age_ms=0.0,
            slo_ms=scenario.slo_ms,
            pinned=client.mode != "plan",
            channels=settings.channels,
        )
        def frame_bytes(size: int) -> int:
            return int(raw_frame_kbits(size, settings.channels) * 125)

        send = frame_to_send(
            client.estimator, chosen_size_px=choice.input_size_px, chosen_upload_ms=choice.upload_ms, slack_ms=choice.slack_ms,
            smallest_size_px=min(step.input_size_px for step in ladder),
            frame_bytes=frame_bytes,
            estimate_mbps=estimate, adaptive=client.mode == "plan", now_s=now, max_message_bytes=MAX_FRAME_BYTES,
        )  # fmt: skip
        size_px, upload_ms, padding = send.input_size_px, send.upload_ms, send.padding_bytes
        record = FrameRecord(seq, now, size_px, None, estimate, client.link.bandwidth_mbps(now))
        if size_px == 0:
            record.outcome, record.reason = "skipped", "no input size would meet the SLO at the estimated bandwidth"
            client.records.append(record)
            return
        size_bytes = frame_bytes(size_px)
        budget_ms = scenario.slo_ms - upload_ms - client.estimator.min_rtt_ms
        arrival = client.link.reserve(size_bytes + padding, now)
        client.estimator.on_send(size_bytes + padding, now)
        in_flight[(client.name, seq)] = record
        sent_s = now

        def at_server() -> None:
            ack_at = engine.now + propagation_s
            engine.at(ack_at, lambda: client.estimator.on_ack(size_bytes + padding, sent_s, ack_at))
            server.receive(client, record, size_px, budget_ms, lambda *answer: deliver(client, *answer))

        engine.at(arrival, at_server)

    def report(client: _Client) -> None:
        now = engine.now
        if now >= scenario.duration_s:
            return
        engine.after(settings.report_interval_s, lambda: report(client))
        estimate = client.estimator.estimate_mbps(now)
        arrival = client.link.reserve(100, now)

        def at_server() -> None:
            client.bandwidth_reported_mbps = estimate
            planned = server.planned_mbps.get(client.name)
            if client.mode in ("plan", "plan_no_backoff") and needs_replan({} if planned is None else {client.name: planned}, {client.name: estimate}, settings.replan_change):
                server.request_replan(propagation_s)

        engine.at(arrival, at_server)

    def tick() -> None:
        if engine.now >= scenario.duration_s:
            return
        server.request_replan(propagation_s, delay_s=0.0)
        engine.after(settings.interval_s, tick)

    # The registration handshake: a live client waits for its first assignment before it
    # streams, so the first plan reaches the clients at time 0.
    server.replan(0.0, at_registration=True)
    engine.after(settings.interval_s, tick)
    for client in clients:
        engine.at(0.0, lambda client=client: capture(client, 0))
        engine.at(settings.report_interval_s, lambda client=client: report(client))
    engine.run(scenario.duration_s + 2 * scenario.slo_ms / 1000.0 + 1.0)
    for client in clients:
        for (name, _), record in list(in_flight.items()):
            if name == client.name:
                record.reason = "no answer before the run ended"
                client.records.append(record)
        run.records[client.name] = sorted(client.records, key=lambda r: r.seq)
        run.assignments[client.name] = client.assignments
    utilisation = [round(busy / scenario.duration_s, 4) for busy in server.worker_busy_s]
    run.worker_utilisation = {f"w{index}": value for index, value in enumerate(utilisation)}
    stats = {"events": engine.events_run, "plans": server.plans, "planning_wall_s": round(server.planning_wall_s, 3), "worker_utilisation": utilisation}
    return run, stats


def sim_variants_from_profiles(family: str, profiles, percentile: str = "p95") -> list[SimVariant]:
    """SimVariants from (Variant, Profile) pairs: the planner's view and the raw samples."""
    result = []
    for variant, profile in profiles:
        live = LiveVariant(
            key=f"{family}.{variant.name}",
            accuracy=variant.accuracy or 0.0,
            input_size_px=variant.input_size_px,
            channels=3,
            latency_ms=profile.monotone_latency_ms(percentile),
            load_ms=profile.load_time_ms or 0.0,
        )
        samples = {b: (stats.samples_ms or [stats.p50_ms]) for b, stats in profile.batches.items()}
        result.append(SimVariant(live, samples))
    return result

