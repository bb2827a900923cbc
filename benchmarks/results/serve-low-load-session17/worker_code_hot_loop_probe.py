import time, numpy as np, statistics
from shoal.runtime.batch_block import BatchBlock
from shoal.runtime.worker import ModelHost, decode_message, encode_message
class Fake:
    def run(self, names, feed):
        return [np.zeros((feed["images"].shape[0], 10), dtype=np.float32)]
block = BatchBlock.create(64 * 1024 * 1024)
host = ModelHost("cpu", 1)
host.sessions["v"] = (Fake(), "images", "logits", (3, 128, 128))
msg = encode_message({"op": "run", "batch_id": 1, "variant": "v", "batch_size": 1, "burst": True, "slot": 0, "request_id": 5})
item = np.random.rand(3, 128, 128).astype(np.float32)
ts = []; tw = []
for i in range(2000):
    t = time.perf_counter()
    block.write_inputs([item], 0)
    enc = encode_message({"op": "run", "batch_id": i, "variant": "v", "batch_size": 1, "burst": True, "slot": 0, "request_id": i})
    tw.append((time.perf_counter() - t) * 1e6)
    t = time.perf_counter()
    m = decode_message(msg)
    r = host.run_block(block, m["variant"], int(m["batch_size"]), bool(m.get("burst")), int(m.get("slot", 0)))
    out = encode_message({"op": "done", "batch_id": 1, **r, "request_id": 5})
    ts.append((time.perf_counter() - t) * 1e6)
print("frontend write_inputs+encode us p50", round(statistics.median(tw), 1), "worker decode+run_block(fake)+encode us p50", round(statistics.median(ts), 1))
block.release()
