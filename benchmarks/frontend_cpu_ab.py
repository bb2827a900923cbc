"""CPU the frontend process spends per request, for servers started from different source trees.

Same load on each (open-loop Poisson from shoal's load generator), trees interleaved ABBA so that
machine noise hits both alike; the frontend's CPU comes from /proc (utime + stime) over the
measured window only, and the generator's own CPU per request is reported beside it. Use a
`git worktree` of the older commit as the other tree:

    git worktree add /tmp/old <commit>
    .venv/bin/python benchmarks/frontend_cpu_ab.py --trees old=/tmp/old/src,new=src \\
        --rate-rps 1500 --model demo.tiny-16 --size-px 16 --rounds 4 --out benchmarks/results/serve-frontend-cpu/light-1500rps-session.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import ab_parser, cpu_s, interleaved, parse_trees, serve_tree  # noqa: E402

from shoal.client.loadgen import LoadGenerator, LoadSpec, summarise  # noqa: E402


def main() -> None:
    args = ab_parser(__doc__.splitlines()[0], duration_s=15.0).parse_args()
    trees = parse_trees(args.trees)
    log = Path(tempfile.gettempdir()) / "frontend_cpu_ab.log"
    rows = []
    with LoadGenerator() as generator:
        for round_index, name in interleaved(trees, args.rounds):
            server = serve_tree(trees[name], args, log)
            try:
                spec = LoadSpec(url=server.url, model=args.model, input_name="images", input_shape=(1, 3, args.size_px, args.size_px),
                                slo_ms=50.0, duration_s=args.duration_s, mode="open", rate_rps=args.rate_rps)  # fmt: skip
                generator.run(dataclasses.replace(spec, duration_s=3.0))  # warm-up
                before = cpu_s(server.process.pid)
                stats = summarise(generator.run(spec))
                used_s = cpu_s(server.process.pid) - before
            finally:
                server.stop()
            rows.append({
                "tree": name, "round": round_index,
                "frontend_cpu_ms_per_request": round(1000 * used_s / stats.num_requests, 4),
                "generator_cpu_ms_per_request": round(1000 * stats.generator_cpu_s / stats.num_requests, 4),
                "goodput_rps": round(stats.goodput_rps, 1), "p99_ms": stats.p99_ms, "mean_batch": stats.mean_batch_size,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
