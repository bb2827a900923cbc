"""Light variant at 2x: where does goodput go? Gate vs admission sheds, worker busy, loop readings."""
import json, re, sys, tempfile, threading, time
from pathlib import Path
import httpx
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/, for ab_servers
from ab_servers import ab_parser, cpu_s, child_pids, parse_trees, warmed_up_servers
from shoal.client.loadgen import LoadGenerator, summarise

def scrape(url):
    text = httpx.get(url + "/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("#"): continue
        m = re.match(r'^(shoal_requests_total|shoal_worker_busy_seconds_total|shoal_event_loop_lag_seconds|shoal_event_loop_busy_share|shoal_batch_size_count|shoal_batch_size_sum)(\{[^}]*\})? ([0-9.e+-]+)$', line)
        if m: out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out

def main():
    parser = ab_parser("probe", duration_s=8.0)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    args = parser.parse_args()
    trees = parse_trees(args.trees)
    rows = []
    with LoadGenerator(priority_boost=True) as gen:
        for r, name, server, spec in warmed_up_servers(trees, args, Path(tempfile.gettempdir()) / "probe.log", gen):
            before = scrape(server.url)
            pids = [server.process.pid] + child_pids(server.process.pid)
            cpu0 = {p: cpu_s(p) for p in pids}
            samples = []
            stop = threading.Event()
            def sample():
                while not stop.wait(0.5):
                    try:
                        m = scrape(server.url)
                        samples.append((m.get("shoal_event_loop_lag_seconds", 0) * 1000, m.get("shoal_event_loop_busy_share", 0)))
                    except Exception:
                        pass
            t = threading.Thread(target=sample); t.start()
            run = gen.run(spec)
            stop.set(); t.join()
            after = scrape(server.url)
            cpu = {("frontend" if p == server.process.pid else f"child{p}"): round((cpu_s(p) - cpu0[p]) / run.wall_s, 3) for p in pids}
            delta = {k: round(after.get(k, 0) - before.get(k, 0), 3) for k in after if "requests_total" in k or "busy_seconds" in k or "batch_size" in k}
            delta = {k: v for k, v in delta.items() if v}
            s = summarise(run)
            row = {"tree": name, "round": r, "offered": s.offered_rps, "goodput": round(s.goodput_rps, 1), "shed": s.shed_fraction,
                   "drop": s.drop_fraction, "p99": s.p99_ms, "cpu": cpu, "metrics": delta,
                   "lag_ms": [round(a, 1) for a, _ in samples], "busy": [round(b, 2) for _, b in samples]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))

if __name__ == '__main__':
    main()
