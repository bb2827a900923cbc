"""Misses of the model-less family endpoint at a tight SLO: 8 closed-loop SDK clients (backing
off 10 ms after a refusal) on the demo family, 25 ms end-to-end SLO, 20 s per setting, with and
without the SDK subtracting its measured outside-server overhead. Run from the repository root
with the demo family built: `.venv/bin/python benchmarks/family_endpoint_misses.py`.
"""
import threading, time, json, sys
from pathlib import Path
import numpy as np
from shoal.client.query import QueryClient, QueryFailed
from shoal.experiments.server_process import start_server_process
from shoal.zoo.repository import ModelRepository
if __name__ == "__main__":
    repo = Path.home()/".cache/shoal/repo"
    images, _ = ModelRepository(repo).load_validation("demo")
    server = start_server_process(repo, "--workers", "2")
    results = {}
    try:
        for subtract in (False, True):
            stats = {"late": 0, "ok": 0, "refused": 0, "variants": {}}
            stop = threading.Event(); lock = threading.Lock()
            def client(seed):
                rng = np.random.default_rng(seed)
                with QueryClient(server.url, subtract_overhead=subtract) as c:
                    while not stop.is_set():
                        img = images[rng.integers(len(images))][None]
                        t = time.perf_counter()
                        try:
                            a = c.infer("demo", img, slo_ms=25)
                            dt = (time.perf_counter() - t) * 1000
                            with lock:
                                stats["ok" if dt <= 25 else "late"] += 1
                                stats["variants"][a.variant] = stats["variants"].get(a.variant, 0) + 1
                        except QueryFailed:
                            with lock: stats["refused"] += 1
                            time.sleep(0.01)  # a client that backs off instead of hammering
            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            for th in threads: th.start()
            time.sleep(20); stop.set()
            for th in threads: th.join()
            total = stats["ok"] + stats["late"] + stats["refused"]
            stats["miss_rate"] = (stats["late"] + stats["refused"]) / total
            results["subtract" if subtract else "plain"] = stats
            print(subtract, json.dumps(stats), flush=True)
    finally:
        server.stop()
