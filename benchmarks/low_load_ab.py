"""Latency at low load (one request in flight, closed loop) of servers from different source trees
or with different `shoal serve` options, interleaved: what the bench's p50 overhead sees.

    .venv/bin/python benchmarks/low_load_ab.py --rate-rps 1 --rounds 3 --duration-s 5 \\
        --trees "1x2=src,2x1=src+--workers+2+--threads+1,2x1-burst=src+--workers+2+--threads+1+--burst-threads+2" \\
        > benchmarks/results/serve-burst-threads/low-load-p50.jsonl

Prints one JSON line per run; the order of the trees alternates between rounds. (`--rate-rps` is
required by the shared parser and unused here.) The stored results were taken with the trees in
the same order every round.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import ab_parser, interleaved, parse_trees, serve_tree  # noqa: E402

from shoal.client.loadgen import LoadGenerator, LoadSpec, summarise  # noqa: E402


def main() -> None:
    args = ab_parser(__doc__.splitlines()[0], duration_s=5.0).parse_args()
    trees = parse_trees(args.trees)
    log = Path(tempfile.gettempdir()) / "low_load_ab.log"
    with LoadGenerator(priority_boost=True) as generator:  # as `shoal bench serve` runs it
        for round_index, name in interleaved(trees, args.rounds):
            server = serve_tree(trees[name], args, log)
            try:
                spec = LoadSpec(url=server.url, model=args.model, input_name="images", input_shape=(1, 3, args.size_px, args.size_px),
                                slo_ms=50.0, duration_s=args.duration_s, mode="closed", concurrency=1)  # fmt: skip
                generator.run(dataclasses.replace(spec, duration_s=1.0))  # warm-up, not counted
                stats = summarise(generator.run(spec))
            finally:
                server.stop()
            print(json.dumps({"tree": name, "round": round_index, "p50_ms": stats.p50_ms, "server_p50_ms": stats.server_p50_ms,
                              "rps": stats.throughput_rps}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
