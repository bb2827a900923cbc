import time, threading, os, sys, multiprocessing as mp
import numpy as np, onnxruntime as ort
from concurrent.futures import ThreadPoolExecutor
PATH = os.path.expanduser("~/.cache/shoal/repo/demo/xlarge-128/model.onnx")
def sess(threads):
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(PATH, o, providers=["CPUExecutionProvider"])
def burner(duty, stop):
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.001 * duty: pass
        time.sleep(0.001 * (1 - duty))
def main():
    s2 = sess(2); s1a = sess(1); s1b = sess(1)
    name = s2.get_inputs()[0].name
    pool = ThreadPoolExecutor(2)
    for duty in (0.0, 0.3, 0.5):
        stop = mp.Event(); procs = []
        if duty:
            procs = [mp.Process(target=burner, args=(duty, stop)) for _ in range(1)]
            for p in procs: p.start()
        for batch in (1, 8):
            x = np.random.rand(batch, 3, 128, 128).astype(np.float32)
            def two_thread(): s2.run(None, {name: x})
            half = batch // 2
            def split():
                if batch == 1: return s1a.run(None, {name: x})
                fa = pool.submit(s1a.run, None, {name: x[:half]}); fb = pool.submit(s1b.run, None, {name: x[half:]})
                fa.result(); fb.result()
            for label, fn in (("2-thread", two_thread), ("split", split), ("2-thread", two_thread), ("split", split)):
                fn(); n = max(20, 400 // batch); t = time.perf_counter()
                for _ in range(n): fn()
                dt = (time.perf_counter() - t) / n
                print(f"burn {duty} batch {batch} {label}: {dt*1000:.2f} ms/batch, {batch/dt:.0f} img/s", flush=True)
        stop.set()
        for p in procs: p.join()
if __name__ == "__main__": main()
