"""shoal's worker layout on the heavy demo variant: one worker with 2 ONNX Runtime threads (the
layout `shoal bench serve` uses, the same compute budget as the lean server and Ray Serve)
against two single-threaded workers (and, with `--layouts`, two that burst to both threads while
the other is idle), quick open-loop sweeps interleaved so that machine noise hits all alike.

    .venv/bin/python benchmarks/serve_worker_layout.py --rounds 3 --out benchmarks/results/serve-worker-layout.json

Each round runs `shoal bench serve --quick --systems shoal [--shoal-workers 2 [--no-shoal-burst]]`
once per layout (the ceiling is measured in each run, so ratios compare like with like).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import shoal.experiments.serve_bench as serve_bench

LAYOUTS = {"1x2": (1, False), "2x1": (2, False), "2x1-burst": (2, True)}
"""Layout name -> (shoal's worker processes sharing two ONNX Runtime threads, burst threads)."""


def run(layout: str, repository: Path, quick: bool = True) -> dict:
    config = serve_bench.BenchConfig(repository=repository, quick=quick, systems=("shoal",), transport=False,
                                     model="demo.xlarge-128", ort_threads=2, shoal_workers=LAYOUTS[layout][0], shoal_burst=LAYOUTS[layout][1])  # fmt: skip
    result = serve_bench.run_serve_bench(config)
    heavy = next(iter(result["variants"].values()))  # the one variant asked for
    shoal = heavy["systems"]["shoal"]
    return {"layout": layout, "goodput_rps": shoal["goodput_rps"], "ceiling_rps": heavy["ceiling"]["goodput_rps"],
            "ratio_vs_ceiling": heavy["ratio_vs_ceiling"], "overload_p99_ms": shoal["overload_p99_ms"],
            "overload_goodput_rps": shoal["overload_goodput_rps"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=Path.home() / ".cache/shoal/repo")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--full", action="store_true", help="full-length points (5 s) instead of the quick sweep")
    parser.add_argument("--layouts", default="1x2,2x1", help=f"comma-separated, of {', '.join(LAYOUTS)}")
    args = parser.parse_args()
    rows = []
    for round_index in range(args.rounds):
        layouts = args.layouts.split(",")
        for layout in (layouts[::-1] if round_index % 2 else layouts):
            rows.append({"round": round_index, "full": args.full, **run(layout, args.repo, quick=not args.full)})
            print(json.dumps(rows[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
