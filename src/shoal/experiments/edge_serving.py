"""End-to-end edge runs: emulated adaptive clients against a real server, one setting at a time.

A setting is `shoal` (clients follow the server's edge plans and back off on their own),
`jellyfish` (clients follow the plans only; the server must run `--edge-policy jellyfish`),
`infaas` (full frames, the server picks a variant per frame: per-query selection without data
adaptation) or `static:<family>.<variant>` (every client always sends that variant's size). All
settings replay the same trace windows (client i starts at offset i of the trace), so they see
the same networks. Per run: accuracy against the labels of the frames actually answered,
deadline-miss rate ((late + dropped + skipped + errors + unanswered) / frames captured),
latency percentiles, the variants used and each client's assignment timeline.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from shoal.client.edge import EdgeClient, EdgeClientConfig, FrameRecord, SessionClosed, SessionRefused
from shoal.client.network import BandwidthTrace, EmulatedLink
from shoal.planner.edge.live import raw_frame_kbits

__all__ = ["EdgeRun", "EdgeScenario", "StaticCandidate", "predict_static_miss_rate", "run_edge_setting", "choose_statics"]


@dataclass(frozen=True)
class EdgeScenario:
    family: str
    trace: BandwidthTrace
    offsets_s: tuple[float, ...]
    """Where each client starts in the trace; one client per offset."""
    fps: float = 15.0
    slo_ms: float = 100.0
    duration_s: float = 60.0
    propagation_ms: float = 5.0

    @property
    def clients(self) -> int:
        return len(self.offsets_s)


@dataclass
class EdgeRun:
    setting: str
    scenario: EdgeScenario
    records: dict[str, list[FrameRecord]] = field(default_factory=dict)
    assignments: dict[str, list[tuple[float, str | None, int]]] = field(default_factory=dict)
    worker_utilisation: dict[str, float] = field(default_factory=dict)
    """Worker -> share of the run it spent executing batches (from the server's metrics)."""

    @property
    def all_records(self) -> list[FrameRecord]:
        return [record for records in self.records.values() for record in records]

    def summary(self) -> dict:
        records = self.all_records
        outcomes = Counter(record.outcome for record in records)
        answered = [r for r in records if r.outcome in ("on_time", "late")]
        labelled = [r for r in answered if r.correct is not None]
        latencies = np.array([r.latency_ms for r in answered], dtype=float)
        misses = len(records) - outcomes["on_time"]
        switches = sum(
            sum(1 for before, after in itertools.pairwise(timeline) if before[1:] != after[1:]) for timeline in self.assignments.values()
        )
        return {
            "setting": self.setting,
            "frames": len(records),
            "answered": len(answered),
            "accuracy": round(sum(bool(r.correct) for r in labelled) / len(labelled), 4) if labelled else None,
            "miss_rate": round(misses / len(records), 4) if records else None,
            "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
            "outcomes": dict(sorted(outcomes.items())),
            "variants": dict(sorted(Counter(r.variant for r in answered).items())),
            "input_sizes": {str(k): v for k, v in sorted(Counter(r.input_size for r in records).items())},
            "assignment_changes": switches,
            "worker_utilisation": dict(sorted(self.worker_utilisation.items())),
        }


def _with_frames_never_captured(records: list[FrameRecord], scenario: "EdgeScenario", reason: str) -> list[FrameRecord]:
    """A session that ended early: its records, plus one unanswered record per frame of the
    scenario it never captured (so that its miss rate counts them, as for a client that stayed)."""
    seen = {record.seq for record in records}
    expected = math.ceil(scenario.duration_s * scenario.fps)
    missing = [FrameRecord(seq, seq / scenario.fps, 0, None, 0.0, None, reason=reason) for seq in range(expected) if seq not in seen]
    return [*records, *missing]


def _frame_source(frames: np.ndarray, labels: np.ndarray, start: int) -> Iterator[tuple[np.ndarray, int]]:
    for index in itertools.count(start):
        yield frames[index % len(frames)], int(labels[index % len(frames)])


async def run_edge_setting(
    url: str,
    setting: str,
    scenario: EdgeScenario,
    frames: np.ndarray,
    labels: np.ndarray,
    *,
    on_record: Callable[[str, FrameRecord], None] | None = None,
    clients_out: list[EdgeClient] | None = None,
) -> EdgeRun:
    """Run every client of the scenario at once under one setting; returns what they saw."""
    pin = setting.split(":", 1)[1] if setting.startswith("static:") else None
    if pin is None and setting not in ("shoal", "jellyfish", "infaas"):
        raise ValueError(f"setting {setting!r}: use shoal, jellyfish, infaas or static:<family>.<variant>")
    run = EdgeRun(setting, scenario)
    clients = []
    for index, offset in enumerate(scenario.offsets_s):
        name = f"client-{index}"
        link = EmulatedLink(scenario.trace, offset_s=offset, propagation_ms=scenario.propagation_ms)
        config = EdgeClientConfig(
            name=name,
            url=url,
            model=scenario.family,
            slo_ms=scenario.slo_ms,
            fps=scenario.fps,
            # As if measured before the session: the rate the link has when the client starts.
            initial_bandwidth_mbps=link.bandwidth_mbps(),
            pin_variant=pin,
            selection="per_query" if setting == "infaas" else "plan",
            local_backoff=setting == "shoal",
        )
        callback = (lambda record, name=name: on_record(name, record)) if on_record else None
        clients.append(EdgeClient(config, uplink=link, on_record=callback))
    if clients_out is not None:
        clients_out.extend(clients)
    stride = max(1, len(frames) // max(1, scenario.clients))
    busy_before = await worker_busy_seconds(url)
    started = time.monotonic()
    # One client's session ending early (the server closed it, or refused it) keeps the others'
    # records: its own are kept too, and the frames it never captured count as unanswered.
    results = await asyncio.gather(
        *(client.run(_frame_source(frames, labels, i * stride), duration_s=scenario.duration_s) for i, client in enumerate(clients)),
        return_exceptions=True,
    )
    busy_after = await worker_busy_seconds(url)
    elapsed = time.monotonic() - started
    run.worker_utilisation = {worker: round((busy_after[worker] - busy_before.get(worker, 0.0)) / elapsed, 4) for worker in busy_after}
    for client, records in zip(clients, results):
        if isinstance(records, (SessionClosed, SessionRefused)):
            records = _with_frames_never_captured(client.records, scenario, f"{type(records).__name__}: {records}")
        elif isinstance(records, BaseException):
            raise records
        run.records[client.config.name] = sorted(records, key=lambda r: r.seq)
        run.assignments[client.config.name] = list(client.assignments)
    return run


async def worker_busy_seconds(url: str) -> dict[str, float]:
    """Each worker's busy-time counter from the server's Prometheus /metrics ({} if unreachable)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            text = (await http.get(url.rstrip("/") + "/metrics")).text
    except httpx.HTTPError:
        return {}
    busy = {}
    for family in text_string_to_metric_families(text):
        if family.name == "shoal_worker_busy_seconds":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    busy[sample.labels["worker"]] = sample.value
    return busy


@dataclass(frozen=True)
class StaticCandidate:
    variant: str
    accuracy: float
    input_size_px: int
    server_ms: float


def predict_static_miss_rate(scenario: EdgeScenario, candidate: StaticCandidate, channels: int = 3, rtt_ms: float | None = None) -> float:
    """Share of frames a static variant would miss on the scenario's trace windows, from the
    network alone: a frame misses when its upload, the round trip and the server time exceed
    the SLO, or when the link cannot carry the frame rate at that size."""
    kbits = raw_frame_kbits(candidate.input_size_px, channels)
    rtt = 2 * scenario.propagation_ms if rtt_ms is None else rtt_ms
    missed = total = 0
    frames = int(math.floor(scenario.duration_s * scenario.fps))
    for offset in scenario.offsets_s:
        for k in range(frames):
            mbps = scenario.trace.mbps_at(offset + k / scenario.fps)
            total += 1
            late = kbits / mbps + rtt + candidate.server_ms > scenario.slo_ms
            overloaded = kbits * scenario.fps > 1000.0 * mbps
            missed += late or overloaded
    return missed / max(1, total)


def choose_statics(scenario: EdgeScenario, candidates: Sequence[StaticCandidate], *, neighbours: int = 1) -> list[StaticCandidate]:
    """The static variants worth measuring: the most accurate one predicted to miss <= 1% of
    frames, and `neighbours` on each side of it in accuracy order (the prediction is coarse;
    measuring both sides shows where the measured boundary lies)."""
    ordered = sorted(candidates, key=lambda c: c.accuracy)
    feasible = [i for i, c in enumerate(ordered) if predict_static_miss_rate(scenario, c) <= 0.01]
    pivot = feasible[-1] if feasible else 0
    return ordered[max(0, pivot - neighbours) : pivot + neighbours + 1]
