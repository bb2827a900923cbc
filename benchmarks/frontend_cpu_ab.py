"""A/B the frontend's CPU per request: servers from different source trees, same load, interleaved."""
import json, os, subprocess, sys, time, urllib.request
from shoal.client.loadgen import LoadGenerator, LoadSpec, summarise

def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def serve(src, workers, threads, model):
    env = dict(os.environ, PYTHONPATH=src)
    proc = subprocess.Popen([sys.executable, "-m", "shoal", "serve", "--http-port", "8400", "--grpc-port", "0", "--workers", str(workers),
                             "--threads", str(threads), "--max-batch-size", "32", "--preload", model], env=env,
                            stdout=subprocess.DEVNULL, stderr=open("/tmp/prof/ab-serve.log", "a"))
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:8400/v2/models/{model}/ready", timeout=1).status == 200:
                return proc
        except Exception:
            time.sleep(0.5)
    raise RuntimeError("not ready")

if __name__ == "__main__":
    trees = dict(arg.split("=") for arg in sys.argv[1].split(","))
    rate, duration, rounds = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    model = sys.argv[5] if len(sys.argv) > 5 else "demo.xlarge-128"
    size = int(sys.argv[6]) if len(sys.argv) > 6 else 128
    layout = sys.argv[7] if len(sys.argv) > 7 else "2x1"
    workers, threads = map(int, layout.split("x"))
    rows = []
    with LoadGenerator() as generator:
        for round_index in range(rounds):
            names = list(trees) if round_index % 2 == 0 else list(reversed(trees))
            for name in names:
                proc = serve(trees[name], workers, threads, model)
                spec = LoadSpec(url="http://127.0.0.1:8400", model=model, input_name="images", input_shape=(1, 3, size, size),
                                slo_ms=50, duration_s=3, mode="open", rate_rps=rate)
                generator.run(spec)  # warm-up
                before = cpu_s(proc.pid)
                run = generator.run(LoadSpec(**{**spec.__dict__, "duration_s": duration}))
                used = cpu_s(proc.pid) - before
                stats = summarise(run)
                stats = stats if isinstance(stats, dict) else stats.__dict__
                row = {"tree": name, "round": round_index, "frontend_cpu_ms_per_request": round(1000 * used / stats["num_requests"], 4),
                       "goodput_rps": round(stats["goodput_rps"], 1), "p99_ms": round(stats["p99_ms"], 2), "mean_batch": round(stats["mean_batch_size"], 2)}
                rows.append(row); print(json.dumps(row), flush=True)
                proc.terminate(); proc.wait(30)
    print(json.dumps(rows))
