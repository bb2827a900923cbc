"""How a server's workers spend a fixed open-loop load: per worker, the share of the time it held
a batch (dispatch to answer) and the share inside ONNX Runtime, with the mean batch, the shed
share and the frontend's CPU, read from shoal's /metrics before and after each run. Trees run one
after another in each round (not at once: they share the machine's cores).

    .venv/bin/python benchmarks/worker_busy_probe.py --trees 'h08=src+--burst-threads+2,h10=src+--burst-threads+2+--admission-headroom+1.0' \\
        --layout 2x1 --rate-rps 290 --rounds 2 --duration-s 8
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import ab_parser, cpu_s, open_loop_spec, serve_tree, warm_up  # noqa: E402

from shoal.client.loadgen import LoadGenerator, summarise  # noqa: E402


def _scrape(url: str) -> dict[str, float]:
    """Worker busy seconds per worker, and compute seconds, batches and items over all variants."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "shoal_worker_busy_seconds_total":
                totals["busy:" + sample.labels["worker"]] = sample.value
            elif sample.name in ("shoal_compute_seconds_sum", "shoal_batch_size_count", "shoal_batch_size_sum"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], duration_s=8.0)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    args = parser.parse_args()
    for round_index in range(args.rounds):
        for tree in args.trees.split(","):
            name, spec_text = tree.split("=", 1)
            server = serve_tree(spec_text, args, Path(f"/tmp/worker_busy_probe-{name}.log"))
            try:
                with LoadGenerator(priority_boost=True) as generator:
                    spec = open_loop_spec(server.url, args, round_index)
                    warm_up(generator, spec)
                    before, started, cpu_before = _scrape(server.url), time.monotonic(), cpu_s(server.process.pid)
                    stats = summarise(generator.run(spec))
                    wall_s = time.monotonic() - started
                    after, frontend_s = _scrape(server.url), cpu_s(server.process.pid) - cpu_before
                delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
                busy = {key.split(":", 1)[1]: round(value / wall_s, 3) for key, value in delta.items() if key.startswith("busy:")}
                print(json.dumps({
                    "tree": name, "round": round_index, "goodput_rps": round(stats.goodput_rps, 1), "shed_fraction": round(stats.shed_fraction, 3),
                    "p99_ms": stats.p99_ms, "mean_batch": round(delta["shoal_batch_size_sum"] / max(1.0, delta["shoal_batch_size_count"]), 2),
                    "busy_share": busy, "compute_share_per_worker": round(delta["shoal_compute_seconds_sum"] / wall_s / max(1, len(busy)), 3),
                    "frontend_cpu_fraction": round(frontend_s / wall_s, 3),
                }), flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
