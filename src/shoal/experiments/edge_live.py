"""Running edge settings against a live server with a rich display: shared by `shoal demo` and
`shoal bench edge-serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shoal.client.edge import FrameRecord
from shoal.client.network import load_trace, trace_offsets
from shoal.core.errors import InvalidInputError, ProcessFailedError
from shoal.core.models import Device, Profile, Variant
from shoal.experiments import code_version
from shoal.experiments.edge_serving import EdgeRun, EdgeScenario, StaticCandidate, choose_statics, run_edge_setting
from shoal.experiments.grid import best_static_row
from shoal.zoo.repository import ModelRepository

__all__ = ["ComparisonResult", "best_static", "compare_on_trace", "family_profiles", "run_settings", "static_candidates"]


@dataclass
class _ClientView:
    frames: int = 0
    answered: int = 0
    correct: int = 0
    misses: int = 0
    last: FrameRecord | None = None


@dataclass
class ComparisonResult:
    runs: list[EdgeRun] = field(default_factory=list)

    @property
    def shoal(self) -> EdgeRun | None:
        return next((run for run in self.runs if run.setting == "shoal"), None)


def family_profiles(repository: ModelRepository, family: str, device: Device) -> list[tuple[Variant, Profile]]:
    pairs = []
    for variant in repository.variants(family):
        profile = repository.load_profile(family, variant.name, device)
        if profile is not None:
            pairs.append((variant, profile))
    return pairs


def static_candidates(family: str, profiles: Sequence[tuple[Variant, Profile]], server_overhead_ms: float = 2.0) -> list[StaticCandidate]:
    """Variants on the accuracy / batch-1 latency Pareto front (a dominated variant is never the
    best static choice), with the server time the edge model predicts for them."""
    candidates = [
        StaticCandidate(f"{family}.{v.name}", v.accuracy or 0.0, v.input_size_px, server_overhead_ms + 2 * p.batch_latency_ms(1, "p95"))
        for v, p in profiles
    ]
    return [
        c
        for c in candidates
        if not any(
            o is not c and o.accuracy >= c.accuracy and o.input_size_px <= c.input_size_px and o.server_ms <= c.server_ms
            and (o.accuracy, -o.input_size_px, -o.server_ms) != (c.accuracy, -c.input_size_px, -c.server_ms)
            for o in candidates
        )
    ]


def best_static(runs: Sequence[EdgeRun]) -> EdgeRun | None:
    """The most accurate static run that missed <= 1% of frames; else the one with the fewest
    misses (the rule of `best_static_row`, applied to runs)."""
    statics = [run for run in runs if run.setting.startswith("static:")]
    summaries = [run.summary() for run in statics]
    chosen = best_static_row(summaries)
    return None if chosen is None else statics[next(i for i, s in enumerate(summaries) if s is chosen)]


def _table(setting: str, views: dict[str, _ClientView], elapsed_s: float, duration_s: float) -> Table:
    table = Table(title=f"{setting}: {elapsed_s:4.0f} / {duration_s:.0f} s", title_justify="left")
    for column in ("client", "link Mbit/s", "estimate", "input px", "variant", "frames", "accuracy", "misses"):
        table.add_column(column, justify="left" if column in ("client", "variant") else "right")
    for name, view in sorted(views.items()):
        last = view.last
        table.add_row(
            name,
            f"{last.link_mbps:.1f}" if last and last.link_mbps is not None else "-",
            f"{last.estimate_mbps:.1f}" if last else "-",
            str(last.input_size) if last else "-",
            (last.variant or "-").split(".", 1)[-1] if last else "-",
            str(view.frames),
            f"{view.correct / view.answered:.1%}" if view.answered else "-",
            f"{view.misses / view.frames:.1%}" if view.frames else "-",
        )
    return table


async def _run_live(url: str, setting: str, scenario: EdgeScenario, frames: np.ndarray, labels: np.ndarray, console: Console) -> EdgeRun:
    views: dict[str, _ClientView] = {}

    def on_record(name: str, record: FrameRecord) -> None:
        view = views.setdefault(name, _ClientView())
        view.frames += 1
        view.last = record
        if record.outcome in ("on_time", "late"):
            view.answered += 1
            view.correct += bool(record.correct)
        if record.outcome != "on_time":
            view.misses += 1

    started = time.monotonic()
    with Live(_table(setting, views, 0, scenario.duration_s), console=console, auto_refresh=False, transient=False) as live:
        task = asyncio.create_task(run_edge_setting(url, setting, scenario, frames, labels, on_record=on_record))
        while not task.done():
            live.update(_table(setting, views, min(time.monotonic() - started, scenario.duration_s), scenario.duration_s), refresh=True)
            await asyncio.wait({task}, timeout=0.5)
        live.update(_table(setting, views, scenario.duration_s, scenario.duration_s), refresh=True)
        return task.result()


def run_settings(
    url: str, settings: Sequence[str], scenario: EdgeScenario, frames: np.ndarray, labels: np.ndarray, console: Console
) -> ComparisonResult:
    result = ComparisonResult()
    for setting in settings:
        result.runs.append(asyncio.run(_run_live(url, setting, scenario, frames, labels, console)))
    return result


@contextlib.contextmanager
def _report_lock(report_dir: Path) -> Iterator[None]:
    """Hold `report_dir` for one run: a second run there would overwrite the first one's server
    log (where its server's port is read from) and mix the two reports. The folder itself is
    locked, so nothing is left in it (a lock file would end up in reports kept in git)."""
    import fcntl  # POSIX only, like the rest of the serving stack

    descriptor = os.open(report_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidInputError(f"{report_dir}: another run is writing its report there; wait for it, or give this run another folder (--report-dir, or --out for bench)") from None
        yield
    finally:
        os.close(descriptor)


def compare_on_trace(
    repository: ModelRepository,
    family: str,
    *,
    trace: str,
    clients: int,
    fps: float,
    slo_ms: float,
    duration_s: float,
    seed: int,
    statics: str,
    report_dir: Path,
    console: Console,
) -> dict:
    """Serve `family` from a fresh `shoal serve`, run shoal and the static baselines ('auto':
    the predicted best and its neighbours, 'all': every Pareto variant) on the same trace
    windows, write the report; returns the runs, shoal's, the best static and the report path."""
    from shoal.experiments.report import write_edge_report
    from shoal.experiments.server_process import start_server_process

    bandwidth = load_trace(trace)
    scenario = EdgeScenario(family, bandwidth, tuple(trace_offsets(bandwidth, clients, seed)), fps=fps, slo_ms=slo_ms, duration_s=duration_s)
    profiles = family_profiles(repository, family, Device.parse("cpu"))
    candidates = static_candidates(family, profiles)
    chosen = candidates if statics == "all" else choose_statics(scenario, candidates)
    settings = ["shoal", *(f"static:{c.variant}" for c in sorted(chosen, key=lambda c: -c.accuracy))]
    frames, labels = repository.load_validation(family)
    report_dir.mkdir(parents=True, exist_ok=True)
    with _report_lock(report_dir):
        console.print(
            f"starting shoal serve on {repository.root}; {clients} clients at {fps:g} fps, SLO {slo_ms:g} ms, trace {trace}, "
            f"{duration_s:g} s per setting: {', '.join(settings)}"
        )
        log_path = report_dir / "server.log"
        server = start_server_process(repository.root, "--idle-unload-s", "100000", "--grpc-port", "0", log_path=log_path)
        try:
            comparison = run_settings(server.url, settings, scenario, frames, labels, console)
        except (OSError, websockets.exceptions.WebSocketException) as error:
            try:  # a dead server's sockets close before its exit status can be collected
                server.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                raise error from None
            raise ProcessFailedError(f"shoal serve exited with status {server.process.returncode} during the run ({error}); its log is {log_path}") from None
        finally:
            server.stop()
        configuration = {
            "family": family, "trace": trace, "clients": clients, "fps": fps, "slo_ms": slo_ms, "duration_s": duration_s,
            "trace_offsets_s": [round(o, 2) for o in scenario.offsets_s], "settings": settings, "version": code_version(),
        }
        report = write_edge_report(report_dir, comparison.runs, variants=profiles, title=f"shoal: {clients} edge clients over the {trace} trace",
                                   configuration=configuration)  # fmt: skip
    return {"runs": comparison.runs, "shoal": comparison.shoal, "best_static": best_static(comparison.runs), "report": report, "configuration": configuration}
