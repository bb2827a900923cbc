"""The server's own share of a low-load answer, for servers from different source trees: per
request (closed loop, one in flight, binary KServe v2 over httpx), the client's latency and the
server's `shoal_server_ms`, each minus the worker's `shoal_compute_ms`. Subtracting each
request's own ONNX Runtime time takes out the model's run-to-run spread, which on a noisy
2-vCPU machine is larger than the differences looked for (0.1-0.3 ms).

    .venv/bin/python benchmarks/low_load_overhead_ab.py --trees 'old=/tmp/old/src+--burst-threads+2,new=src+--burst-threads+2' \\
        --layout 2x1 --rounds 8 --requests 250 --out benchmarks/results/serve-low-load-session17/overhead-ab.json

Prints one JSON line per server; the trees alternate ABBA between rounds. (`--rate-rps` is
required by the shared parser and unused here.)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_servers import ab_parser, interleaved, parse_trees, serve_tree, write_rows  # noqa: E402

WARM_UP_REQUESTS = 30
PAUSE_S = 0.004  # between requests: the server is idle when each arrives, as at low load


def binary_request(size_px: int) -> tuple[bytes, int]:
    """A one-image FP32 request in Triton's binary tensor extension; (body, JSON header length)."""
    tensor = np.random.default_rng(0).random((1, 3, size_px, size_px), dtype=np.float32)
    header = json.dumps({
        "inputs": [{"name": "images", "shape": list(tensor.shape), "datatype": "FP32", "parameters": {"binary_data_size": tensor.nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
        "parameters": {"slo_ms": 50},
    }).encode()  # fmt: skip
    return header + tensor.tobytes(), len(header)


def measure(url: str, model: str, body: bytes, header_length: int, requests: int) -> dict[str, float]:
    """Medians over `requests` answers (after a warm-up) of the client's and the server's time
    outside the worker's ONNX Runtime run, and of that run itself."""
    outside_client, outside_server, compute = [], [], []
    headers = {"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"}
    with httpx.Client(timeout=10.0) as client:
        for index in range(WARM_UP_REQUESTS + requests):
            started = time.perf_counter()
            response = client.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers)
            client_ms = (time.perf_counter() - started) * 1000.0
            if response.status_code != 200:
                raise RuntimeError(f"the server answered {response.status_code}: {response.text[:200]}")
            parameters = response.json()["parameters"]
            if index >= WARM_UP_REQUESTS:
                outside_client.append(client_ms - parameters["shoal_compute_ms"])
                outside_server.append(parameters["shoal_server_ms"] - parameters["shoal_compute_ms"])
                compute.append(parameters["shoal_compute_ms"])
            time.sleep(PAUSE_S)
    return {
        "client_minus_compute_ms": round(statistics.median(outside_client), 3),
        "server_minus_compute_ms": round(statistics.median(outside_server), 3),
        "compute_ms": round(statistics.median(compute), 3),
    }


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], duration_s=0.0)
    parser.add_argument("--requests", type=int, default=250)
    args = parser.parse_args()
    trees = parse_trees(args.trees)
    body, header_length = binary_request(args.size_px)
    log = Path(tempfile.gettempdir()) / "low_load_overhead_ab.log"
    rows = []
    for round_index, name in interleaved(trees, args.rounds):
        server = serve_tree(trees[name], args, log)
        try:
            rows.append({"tree": name, "round": round_index, **measure(server.url, args.model, body, header_length, args.requests)})
        finally:
            server.stop()
        print(json.dumps(rows[-1]), flush=True)
    write_rows(args.out, args, rows)


if __name__ == "__main__":
    main()
