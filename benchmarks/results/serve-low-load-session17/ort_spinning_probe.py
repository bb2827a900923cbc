import time, numpy as np, glob, statistics, json, resource, onnxruntime as ort
path = glob.glob('/root/.cache/shoal/repo/demo/xlarge-128/*.onnx')[0]
x = np.random.rand(1, 3, 128, 128).astype(np.float32)
sessions = {}
for spin in ("0", "1"):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.add_session_config_entry("session.intra_op.allow_spinning", spin)
    sessions[spin] = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
for rnd in range(3):
    for spin, s in sessions.items():
        for _ in range(5): s.run(None, {"images": x})
        ts = []; r0 = resource.getrusage(resource.RUSAGE_SELF); c0 = r0.ru_utime + r0.ru_stime
        for _ in range(200):
            t = time.perf_counter(); s.run(None, {"images": x}); ts.append((time.perf_counter() - t) * 1000); time.sleep(0.004)
        r1 = resource.getrusage(resource.RUSAGE_SELF); c1 = r1.ru_utime + r1.ru_stime
        print(json.dumps({"spin": spin, "p50_ms": round(statistics.median(ts), 3), "cpu_ms_per_run": round((c1 - c0) * 1000 / 200, 3)}))
