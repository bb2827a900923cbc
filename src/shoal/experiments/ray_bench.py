"""`shoal bench ray`: the same workload on the local and the Ray backend, same workers, one machine.

Both servers get the same flags (workers, threads, max batch) and the same closed-loop load
from the load generator in its own process; goodput is answers within the SLO per second.
The model is a fixture variant heavy enough for the workers, not the HTTP stack, to be the
bottleneck (built in seconds, no PyTorch), or any repository variant with --repo/--model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from shoal.client.loadgen import LoadGenerator, LoadSpec, summarise
from shoal.experiments.server_process import start_server_process

__all__ = ["run_ray_bench"]


def run_ray_bench(
    *, quick: bool = True, repository: Path | None = None, model: str = "fixture.rf-heavy", input_px: int = 128,
    workers: int = 2, concurrency: int = 16, slo_ms: float = 200.0, progress: Callable[[str], None] | None = None,
) -> dict:
    duration_s = 8.0 if quick else 30.0
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        if repository is None:
            from shoal.zoo.fixture import FixtureVariantSpec, build_fixture_family
            from shoal.zoo.repository import ModelRepository

            repository = Path(scratch) / "repo"
            build_fixture_family(ModelRepository(repository), variants=(FixtureVariantSpec("rf-heavy", 128, 256),))
        flags = ("--workers", str(workers), "--threads", "1", "--max-batch-size", "16", "--preload", model)
        with LoadGenerator() as generator:
            for backend in ("local", "ray"):
                if progress:
                    progress(backend)
                server = start_server_process(repository, "--backend", backend, *flags, timeout_s=180)
                try:
                    spec = LoadSpec(url=server.url, model=model, input_name="images", input_shape=(1, 3, input_px, input_px),
                                    slo_ms=slo_ms, duration_s=duration_s, mode="closed", concurrency=concurrency)
                    generator.run(LoadSpec(**{**spec.__dict__, "duration_s": 2.0}))  # warm-up, not counted
                    stats = summarise(generator.run(spec))
                finally:
                    server.stop()
                results[backend] = {
                    "goodput_rps": round(stats.goodput_rps, 1),
                    "throughput_rps": round(stats.throughput_rps, 1),
                    "p50_ms": stats.p50_ms,
                    "p99_ms": stats.p99_ms,
                    "errors": stats.num_http_errors + stats.num_client_errors,
                }
    results["ratio"] = round(results["ray"]["goodput_rps"] / results["local"]["goodput_rps"], 3) if results["local"]["goodput_rps"] else None
    results["setup"] = {"model": model, "workers": workers, "concurrency": concurrency, "slo_ms": slo_ms, "duration_s": duration_s}
    return results
