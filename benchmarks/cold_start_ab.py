"""The first seconds after `shoal serve` reports its model ready: load at a fixed open-loop rate
from the first moment (no warm-up), answers counted by status per half second, for servers
started from different source trees (interleaved; tree specs as in ab_servers.py).

    .venv/bin/python benchmarks/cold_start_ab.py --trees old=/tmp/old/src+--burst-threads+2,new=src+--burst-threads+2 \\
        --layout 2x1 --rate-rps 300 --rounds 3 --duration-s 3 --out benchmarks/results/serve-cold-start/heavy-300-rps.json
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import ab_parser, interleaved, open_loop_spec, parse_trees, serve_tree, write_rows  # noqa: E402

from shoal.client.loadgen import LoadGenerator  # noqa: E402

BIN_S = 0.5


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], duration_s=3.0)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    args = parser.parse_args()
    trees = parse_trees(args.trees)
    log = Path(tempfile.gettempdir()) / "cold_start_ab.log"
    rows = []
    with LoadGenerator(priority_boost=True) as generator:
        for round_index, name in interleaved(trees, args.rounds):
            server = serve_tree(trees[name], args, log)  # returns once the model reports ready
            try:
                run = generator.run(open_loop_spec(server.url, args, round_index))
            finally:
                server.stop()
            bins = []
            for index in range(int(args.duration_s / BIN_S)):
                in_bin = (run.send_s >= index * BIN_S) & (run.send_s < (index + 1) * BIN_S)
                bins.append({str(status): count for status, count in sorted(collections.Counter(run.status[in_bin].tolist()).items())})
            total = {str(status): count for status, count in sorted(collections.Counter(run.status.tolist()).items())}
            rows.append({"tree": name, "round": round_index, "requests": int(run.status.size), "by_status": total, "by_half_second": bins})
            print(json.dumps(rows[-1]), flush=True)
    write_rows(args.out, args, rows)


if __name__ == "__main__":
    main()
