"""Latency of answered requests at a fixed overload, as the client sees it, for servers started
from different source trees (interleaved ABBA so machine noise hits both alike).

The client's time from the actual send is split into shoal's own time (`shoal_server_ms`) and
the rest (sockets, the frontend's read queue before its clock starts, the answer's way back):
that rest is what the server cannot see on its clock.

    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/overload_tail_ab.py --trees old=/tmp/old/src,new=src --rate-rps 1240 \\
        --rounds 4 --duration-s 8 --out benchmarks/results/serve-admission-error/final-heavy-1240-rps.json

A tree may also carry `shoal serve` options and environment variables (see ab_servers.py), e.g.
`--trees default=src,tight=src+--admission-headroom+0.6`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import ab_parser, cpu_s, parse_trees, warmed_up_servers, write_rows  # noqa: E402

from shoal.client.loadgen import LoadGenerator, summarise  # noqa: E402


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2), "max": round(float(values.max()), 2)}


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], duration_s=10.0)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    args = parser.parse_args()
    trees = parse_trees(args.trees)
    log = Path(tempfile.gettempdir()) / "overload_tail_ab.log"
    rows = []
    with LoadGenerator(priority_boost=True) as generator, contextlib.closing(warmed_up_servers(trees, args, log, generator)) as rounds:
        for round_index, name, server, spec in rounds:  # closing: a failure stops the server at once
            before = cpu_s(server.process.pid)
            run = generator.run(spec)
            frontend_s = cpu_s(server.process.pid) - before
            stats = summarise(run)
            ok = run.status == 200
            from_send = run.latency_ms[ok] - run.start_lag_ms[ok]
            outside = from_send - run.server_ms[ok]
            rows.append({
                "tree": name, "round": round_index, "offered_rps": stats.offered_rps,
                "goodput_rps": round(stats.goodput_rps, 1), "p99_ms": stats.p99_ms, "p99_from_send_ms": stats.p99_from_send_ms,
                "server_p99_ms": stats.server_p99_ms, "late_fraction": stats.late_fraction, "shed_fraction": stats.shed_fraction,
                "drop_fraction": stats.drop_fraction, "error_fraction": stats.error_fraction, "mean_batch": stats.mean_batch_size,
                "outside_server_ms": _quantiles(outside), "frontend_cpu_fraction": round(frontend_s / run.wall_s, 3),
                "generator_cpu_fraction": stats.generator_cpu_fraction,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    write_rows(args.out, args, rows)


if __name__ == "__main__":
    main()
