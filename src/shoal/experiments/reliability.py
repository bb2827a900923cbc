"""`shoal bench reliability`: the reliability contract of DESIGN.md, measured on a live server.

Phases, each against a real `shoal serve` on a private copy of a repository:

1. overload and soak: measure capacity (closed loop), offer 3x of it (open loop), then half of
   it; admitted requests' p99 against the SLO, shed requests' 429 + Retry-After, the time until
   the server is back to answering everything in time, and the RSS growth of the server and its
   workers across the whole phase;
2. fuzzing: schemathesis over /openapi.json and well-formed tensors with random parameters;
3. fault injection: SIGKILL the worker under load, kill the controller under load (the server runs
   with `--fault-injection`; its supervisor must restart it), corrupt a model file and ask for it, and load
   every variant through a model cache that holds one.

Every request sent is counted once as answered (200), an error (any other HTTP answer) or lost
(no HTTP answer at all); `lost` and `server_5xx` (5xx outside injected faults) must be 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from shoal.client.loadgen import STATUS_BACKLOG, LoadGenerator, LoadSpec
from shoal.experiments.server_process import ServerProcess, child_pids, scrape_metric, start_server_process
from shoal.profiler.measure import resident_memory_bytes

__all__ = ["run_reliability"]

MODEL = "fixture.rf-heavy"
"""A fixture variant heavy enough (256 filters at 128 px, a few ms per image on one thread) that
the server, not the HTTP stack or the load generator, is what 3x capacity overloads."""
TOKEN = "reliability-secret"


@dataclass
class Tally:
    requests_sent: int = 0
    answered: int = 0
    errors: int = 0
    lost: int = 0
    server_5xx: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    phase: str = ""
    server_5xx_by_phase: dict[str, int] = field(default_factory=dict)

    def add(self, status: int | None, *, fault: bool = False) -> None:
        """One request's outcome; `status` None means no HTTP answer came back. 503 (model not
        loaded, worker restarting) and 504 (dropped at its deadline) are the contract's explicit
        availability answers, not server errors; every other 5xx is."""
        self.requests_sent += 1
        key = "none" if status is None else str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if status is None:
            self.lost += 1
        elif status == 200:
            self.answered += 1
        else:
            self.errors += 1
            if status >= 500 and status not in (503, 504) and not fault:
                self.server_5xx += 1
                self.server_5xx_by_phase[self.phase] = self.server_5xx_by_phase.get(self.phase, 0) + 1


def _rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (the worker processes)."""
    return sum(resident_memory_bytes(member) for member in (pid, *child_pids(pid)))


def _body(items: int = 1, side: int = 64, slo_ms: float = 5000.0) -> dict:
    data = np.zeros((items, 3, side, side), np.float32)
    return {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(data.shape), "data": data.ravel().tolist()}], "parameters": {"slo_ms": slo_ms}}


def _post(url: str, model: str, body: dict, **kwargs) -> httpx.Response | None:
    try:
        # json.dumps writes NaN/Infinity as bare tokens (not JSON): fuzzed bodies may carry them.
        return httpx.post(f"{url}/v2/models/{model}/infer", content=json.dumps(body), timeout=30, **kwargs)
    except httpx.HTTPError:
        return None


# -- phases -----------------------------------------------------------------------------------


def _overload(server: ServerProcess, tally: Tally, *, slo_ms: float, overload_s: float, recovery_s: float) -> dict:
    spec = dict(url=server.url, model=MODEL, input_name="images", input_shape=(1, 3, 128, 128), slo_ms=slo_ms, drain_timeout_s=5.0)
    with LoadGenerator() as generator:
        capacity_run = generator.run(LoadSpec(**spec, duration_s=3.0, mode="closed", concurrency=8))
        answered = int(np.sum(capacity_run.status == 200))
        capacity_rps = answered / max(capacity_run.wall_s, 1e-9)
        rss_before = _rss_bytes(server.process.pid)
        retry_after: list[str | None] = []
        sampling = threading.Event()

        def sample_shed_answers():  # the generator records statuses only; look at headers here
            while not sampling.is_set():
                response = _post(server.url, MODEL, _body(side=128, slo_ms=slo_ms))
                tally.add(None if response is None else response.status_code)
                if response is not None and response.status_code == 429:
                    retry_after.append(response.headers.get("retry-after"))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample_shed_answers)
        sampler.start()
        try:
            burst = generator.run(LoadSpec(**spec, duration_s=overload_s, mode="open", rate_rps=3.0 * capacity_rps, seed=1))
        finally:
            sampling.set()
            sampler.join()
        after = generator.run(LoadSpec(**spec, duration_s=recovery_s, mode="open", rate_rps=0.5 * capacity_rps, seed=2))
        rss_after = _rss_bytes(server.process.pid)
    for run in (capacity_run, burst, after):
        for status in run.status:
            if status != STATUS_BACKLOG:  # never sent: the generator's own in-flight cap
                tally.add(int(status) if status > 0 else None)
    admitted = burst.latency_ms[burst.status == 200]
    server_ms = burst.server_ms[burst.status == 200] if burst.server_ms is not None else np.array([])
    server_ms = server_ms[np.isfinite(server_ms)]
    # Recovery: the first 0.5 s window after the burst from which every request is answered in time.
    ok = (after.status == 200) & (after.latency_ms <= slo_ms)
    bins = np.floor(after.send_s / 0.5).astype(int)
    bad_bins = sorted({int(b) for b, good in zip(bins, ok) if not good})
    recovered_s = 0.0 if not bad_bins else (bad_bins[-1] + 1) * 0.5
    return {
        "capacity_rps": round(capacity_rps, 1),
        "offered_rps": round(3.0 * capacity_rps, 1),
        "overload_s": overload_s,
        "burst_answered": int(np.sum(burst.status == 200)),
        "burst_shed_429": int(np.sum(burst.status == 429)),
        "burst_dropped_504": int(np.sum(burst.status == 504)),
        "admitted_p99_ms": float(np.percentile(admitted, 99)) if admitted.size else None,
        "admitted_server_p99_ms": float(np.percentile(server_ms, 99)) if server_ms.size else None,
        "generator_send_lag_p99_ms": round(burst.send_lag_p99_ms, 1),
        "slo_ms": slo_ms,
        "shed_with_retry_after": sum(1 for value in retry_after if value and int(value) >= 1),
        "shed_sampled": len(retry_after),
        "recovered_after_s": recovered_s,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "rss_growth_pct": round(100.0 * (rss_after - rss_before) / rss_before, 2) if rss_before else None,
    }


def _fuzz(server: ServerProcess, tally: Tally, *, examples: int) -> int:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    cases = 0
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            nonlocal cases
            cases += 1
            try:
                tally.add(case.call(timeout=30).status_code)
            except Exception:  # a reset or a hang is a lost request, counted, not a crash of the bench
                tally.add(None)

        check()
    values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**7), st.floats(allow_nan=True), st.text(max_size=5))

    @given(side=st.integers(1, 128), parameters=st.dictionaries(st.sampled_from(["slo_ms", "timeout", "priority", "min_accuracy", "max_cost_per_1000_usd"]), values, max_size=4),
           model=st.sampled_from(["fixture", "fixture.rf-16", "fixture.rf-64"]))
    @settings(max_examples=examples * 3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def well_formed(side, parameters, model):
        nonlocal cases
        cases += 1
        body = _body(side=side)
        body["parameters"] = parameters
        response = _post(server.url, model, body)
        tally.add(None if response is None else response.status_code)

    well_formed()
    return cases


def _faults(server: ServerProcess, repository: Path, tally: Tally, *, load_s: float) -> dict:
    injected = 0
    # 1. SIGKILL the worker under load: in-flight requests get an error, the worker comes back.
    (worker_pid,) = child_pids(server.process.pid, worker_processes_only=True)[:1] or (None,)
    stop = threading.Event()
    outcomes: list[int | None] = []

    def client():
        while not stop.is_set():
            response = _post(server.url, "fixture.rf-64", _body())
            outcomes.append(None if response is None else response.status_code)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client) for _ in range(6)]
        time.sleep(load_s / 2)
        if worker_pid:
            os.kill(worker_pid, signal.SIGKILL)
            injected += 1
        time.sleep(load_s / 2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and httpx.get(f"{server.url}/v2/models/fixture.rf-64/ready", timeout=5).status_code != 200:
            time.sleep(0.2)
        # 2. Kill the controller (the supervised loop ends as a crash would end it), still under load.
        ticks_before = scrape_metric(server.url, "shoal_controller_ticks_total")
        killed = httpx.post(f"{server.url}/v2/faults/controller/kill", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        injected += killed.status_code == 202
        killed_at = time.monotonic()
        controller_back_s = None
        while time.monotonic() - killed_at < 30:
            if scrape_metric(server.url, "shoal_background_restarts_total", task="controller") >= 1 and (
                scrape_metric(server.url, "shoal_controller_ticks_total") > ticks_before + 1
            ):
                controller_back_s = round(time.monotonic() - killed_at, 2)
                break
            time.sleep(0.05)
        time.sleep(load_s / 4)
        stop.set()
        for future in futures:
            future.result(timeout=60)
    for status in outcomes:
        tally.add(status, fault=True)
    restarted = worker_pid not in child_pids(server.process.pid, worker_processes_only=True)
    # 3. A corrupt model file: loading it is a clear 503, everything else keeps answering.
    model_file = repository / "fixture" / "rf-32" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:64])
    injected += 1
    headers = {"Authorization": f"Bearer {TOKEN}"}
    load = httpx.post(f"{server.url}/v2/repository/models/fixture.rf-32/load", headers=headers, timeout=30)
    tally.add(load.status_code, fault=True)
    still = _post(server.url, "fixture.rf-64", _body())
    tally.add(None if still is None else still.status_code)
    # 4. Every variant through a cache that holds one: loads evict, the server keeps answering.
    injected += 1
    ready_counts = []
    for variant in ("fixture.rf-16", "fixture.rf-heavy", "fixture.rf-64", "fixture.rf-16"):
        response = httpx.post(f"{server.url}/v2/repository/models/{variant}/load", headers=headers, timeout=30)
        tally.add(response.status_code, fault=True)
        index = httpx.get(f"{server.url}/v2/repository/index", timeout=10).json()
        ready_counts.append(sum(1 for row in index if row["state"] == "READY" and "." in row["name"]))
        family = _post(server.url, "fixture", _body())
        tally.add(None if family is None else family.status_code)
    return {
        "worker_killed_and_restarted": bool(worker_pid) and restarted,
        "requests_during_kills": len(outcomes),
        "controller_kill_status": killed.status_code,
        "controller_ticking_again_after_s": controller_back_s,
        "corrupt_model_load_status": load.status_code,
        "corrupt_model_error": load.json().get("error", "")[:200],
        "served_after_corrupt_load": bool(still is not None and still.status_code == 200),
        "ready_variants_after_each_load": ready_counts,
        "faults_injected": injected,
    }


def run_reliability(*, quick: bool = True, progress: Callable[[str], None] | None = None, scale: float = 1.0, extra_server_args: tuple[str, ...] = ()) -> dict:
    """Run every phase on a fresh fixture repository; `scale` shortens the timed phases (tests)."""
    from shoal.zoo.fixture import FIXTURE_VARIANTS, FixtureVariantSpec, build_fixture_family
    from shoal.zoo.repository import ModelRepository

    overload_s = (10.0 if quick else 60.0) * scale
    recovery_s = (8.0 if quick else 20.0) * scale
    examples = max(3, int((8 if quick else 50) * scale))
    tally = Tally()
    report: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch) / "repo"
        build_fixture_family(ModelRepository(repository), variants=(*FIXTURE_VARIANTS, FixtureVariantSpec("rf-heavy", 128, 256)))
        common = ("--admin-token", TOKEN, "--workers", "1", "--threads", "1", "--max-batch-size", "8", "--queue-capacity", "256", *extra_server_args)
        server = start_server_process(repository, *common, "--preload", MODEL, "--preload", "fixture.rf-16", "--preload", "fixture.rf-64")
        try:
            if progress:
                progress("overload")
            tally.phase = "overload"
            report["overload"] = _overload(server, tally, slo_ms=100.0, overload_s=overload_s, recovery_s=recovery_s)
            if progress:
                progress("fuzz")
            tally.phase = "fuzz"
            report["fuzz_cases"] = _fuzz(server, tally, examples=examples)
        finally:
            server.stop()
        fault_repository = Path(scratch) / "faults"
        shutil.copytree(repository, fault_repository)
        # A cache budget that holds one variant (each is estimated at 3x its file) but not two.
        largest = max(path.stat().st_size for path in fault_repository.glob("fixture/*/model.onnx"))
        smallest = min(path.stat().st_size for path in fault_repository.glob("fixture/*/model.onnx"))
        cache_mb = 3 * (largest + smallest / 2) / 2**20
        server = start_server_process(
            fault_repository, *common, "--preload", "fixture.rf-64", "--cache-mb", f"{cache_mb:.6f}", "--fault-injection"
        )
        try:
            if progress:
                progress("faults")
            tally.phase = "faults"
            report["faults"] = _faults(server, fault_repository, tally, load_s=4.0 * scale)
        finally:
            server.stop()
        alive_after = server.process.returncode == 0
    return {
        "requests_sent": tally.requests_sent,
        "answered": tally.answered,
        "errors": tally.errors,
        "lost": tally.lost,
        "server_5xx": tally.server_5xx,
        "fuzz_cases": report["fuzz_cases"],
        "faults_injected": report["faults"]["faults_injected"],
        "rss_growth_pct": report["overload"]["rss_growth_pct"],
        "statuses": tally.statuses,
        "server_5xx_by_phase": tally.server_5xx_by_phase,
        "overload": report["overload"],
        "faults": report["faults"],
        "clean_shutdown": alive_after,
    }
