"""The worker process: ONNX Runtime sessions for its loaded variants on one device.

A worker is a separate OS process so that a crashing or hanging model cannot take the server
down and so that Python-level work in the frontend never competes with the model for the GIL.
Tensors travel through one shared-memory block per worker (`BatchBlock`: a slot per batch in
flight, inputs in a slot's first half, outputs in its second); the connection (a pipe, or a Unix socket to a Ray actor on the
server's node, which serves the same loop) carries only small JSON control messages, so nothing
is pickled and the bytes of a batch are copied once on each side.

Control messages (JSON over a multiprocessing Connection, parent -> worker), each with a
"request_id" that its reply repeats:
    {"op": "load", "variant", "path", "input_name", "output_name", "input_shape", "warmup",
     "profile_batch_sizes", "profile_repeats"}
    {"op": "unload", "variant"}
    {"op": "run", "batch_id", "variant", "batch_size", "burst", "slot"}
    {"op": "stop"}
and replies (worker -> parent): {"op": "ready", "request_id": 0} (unasked, once),
{"op": "loaded", ...}, {"op": "unloaded", ...}, {"op": "done", "batch_id", "output_shape",
"compute_ms"} or {"op": "error", "message", ...}.

Loads run in order on a thread of their own, so a worker keeps running batches of the variants
it holds while it loads another (opening, warming up and profiling a variant takes ~300 ms for
a demo variant, seconds for a large one; with one worker, the default, nothing was served
meanwhile). Their replies can therefore overtake a batch's: the parent matches replies by
"request_id", not by order. Unloads stay in order with the batches (a batch sent before an
unload still finds its variant). Batches run in the order they came: the parent may send the
next one, in the other slot, while this one runs, and the worker takes it up straight away.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import orjson

from shoal.runtime.batch_block import BatchBlock

__all__ = ["ModelHost", "WorkerConfig", "serve_connection", "worker_main"]


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    device: str
    intra_op_threads: int
    shared_memory_name: str
    shared_memory_bytes: int
    burst_threads: int = 0


def encode_message(message: dict) -> bytes:
    """A control message as JSON bytes: orjson, fast on the per-batch path, or json for the rare
    message orjson refuses (text with lone surrogates: a path of undecodable bytes, or an error
    quoting one), which would otherwise fail the load or kill the worker's loop."""
    try:
        return orjson.dumps(message)
    except TypeError:
        return json.dumps(message).encode()


def decode_message(payload: bytes) -> dict:
    """The other side of `encode_message` (json's escapes of lone surrogates are refused by orjson)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


def _send(connection: Connection, message: dict) -> None:
    connection.send_bytes(encode_message(message))


class _Replies:
    """The worker's end of the connection, shared by the batch loop and the loading thread: one
    whole message at a time (a Connection's send is not safe from two threads at once)."""

    def __init__(self, connection: Connection):
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, request: dict, reply: dict) -> None:
        with self._lock:
            _send(self._connection, {**reply, "request_id": request.get("request_id")})

    def error(self, request: dict, error: Exception) -> None:
        op = request.get("op")
        self.send(request, {"op": "error", "request_op": op, "batch_id": request.get("batch_id"), "variant": request.get("variant"), "message": str(error)[:500]})


class ModelHost:
    """ONNX Runtime sessions for the variants loaded on one device: the worker's actual work.

    Shared by the local worker process (below) and the Ray actor (shoal.runtime.ray_backend),
    so both backends load, warm up, profile and run variants identically.

    With `burst_threads` above `intra_op_threads` (CPU workers that share a machine's cores),
    each variant also gets a session with `burst_threads` threads, which a batch runs on when
    the scheduler says every other worker is idle: one wide worker's latency at low load, the
    throughput of several narrow ones (measured higher than one wide one on a shared 2-core
    machine; README, "Burst threads") under load. Callers check that it is wider (the CLI);
    a session no wider than the narrow one is not made.
    """

    def __init__(self, device: str, intra_op_threads: int, burst_threads: int = 0):
        from shoal.core.models import Device

        self.device = Device.parse(device)
        self.intra_op_threads = intra_op_threads
        self.burst_threads = burst_threads if burst_threads > intra_op_threads and self.device.kind == "cpu" else 0
        self.sessions: dict[str, tuple[object, str, str, tuple[int, ...]]] = {}
        self.burst_sessions: dict[str, object] = {}
        # Batches begun and done, so that a load's profile (on the loading thread) can tell
        # whether a batch ran beside a sample (see `_profile_sample_ms`).
        self._batches_begun = 0
        self._batches_done = 0

    def _profile_sample_ms(self, run) -> tuple[float, bool]:
        """Time `run()`; returns (ms, whether a batch of this worker ran beside it). Loads run
        beside batches, and a profile taken beside them describes a busier worker than the
        batcher will use it for. (Taking such a sample again until a quiet moment was tried:
        under load the longer load refused more requests than the better profile saved.)"""
        begun = self._batches_begun
        quiet = begun == self._batches_done
        started = time.perf_counter()
        run()
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return elapsed_ms, not (quiet and self._batches_begun == begun)

    def load(self, message: dict) -> dict:
        import numpy as np

        from shoal.profiler.session import create_session

        started = time.perf_counter()
        session = create_session(message["path"], self.device, intra_op_threads=self.intra_op_threads)
        item_shape = tuple(message["input_shape"])
        warmup_feed = {message["input_name"]: np.zeros((1, *item_shape), dtype=np.float32)}

        def warm_up(new_session) -> None:
            for _ in range(int(message.get("warmup", 2))):
                new_session.run([message["output_name"]], warmup_feed)

        warm_up(session)
        # Warm-up doubles as a small profile taken under the worker's own thread count, which
        # is what the batcher's latency model must describe.
        latency_ms: dict[str, list[float]] = {}
        disturbed_samples = 0
        for batch_size in message.get("profile_batch_sizes", []):
            feed = {message["input_name"]: np.zeros((batch_size, *item_shape), dtype=np.float32)}
            session.run([message["output_name"]], feed)
            samples = []
            for _ in range(int(message.get("profile_repeats", 5))):
                sample_ms, disturbed = self._profile_sample_ms(lambda: session.run([message["output_name"]], feed))
                samples.append(sample_ms)
                disturbed_samples += disturbed
            latency_ms[str(batch_size)] = samples
        if self.burst_threads:  # profiled above with the narrow session: what a loaded server sees
            burst_session = create_session(message["path"], self.device, intra_op_threads=self.burst_threads)
            warm_up(burst_session)
            self.burst_sessions[message["variant"]] = burst_session
        # Until ready to serve, profile included: what a query that waits for a load waits.
        load_ms = (time.perf_counter() - started) * 1000.0
        self.sessions[message["variant"]] = (session, message["input_name"], message["output_name"], item_shape)
        return {"op": "loaded", "variant": message["variant"], "load_ms": load_ms, "latency_ms": latency_ms,
                "disturbed_samples": disturbed_samples}

    def unload(self, variant: str) -> None:
        self.sessions.pop(variant, None)
        self.burst_sessions.pop(variant, None)

    def item_shape(self, variant: str) -> tuple[int, ...]:
        return self.sessions[variant][3]

    def run(self, variant: str, inputs, burst: bool = False):
        """One batch (on the burst session when asked and there is one); returns (float32 outputs, compute ms)."""
        import numpy as np

        session, input_name, output_name, _ = self.sessions[variant]
        if burst:
            session = self.burst_sessions.get(variant, session)
        self._batches_begun += 1
        started = time.perf_counter()
        try:
            (outputs,) = session.run([output_name], {input_name: inputs})
        finally:
            self._batches_done += 1
        compute_ms = (time.perf_counter() - started) * 1000.0
        return np.ascontiguousarray(outputs, dtype=np.float32), compute_ms

    def run_block(self, block: BatchBlock, variant: str, batch_size: int, burst: bool = False, slot: int = 0) -> dict:
        """One batch read from and written back to a slot of a shared block; returns the reply's numbers."""
        outputs, compute_ms = self.run(variant, block.inputs(batch_size, self.item_shape(variant), slot), burst)
        return {"output_shape": block.write_outputs(outputs, slot), "compute_ms": compute_ms}


def _load_in_order(host: ModelHost, replies: _Replies, requests: queue.Queue) -> None:
    """The loading thread: loads, in the order they came, until None or the connection closes."""
    while (request := requests.get()) is not None:
        try:
            try:
                reply = host.load(request)
            except Exception as error:  # report and keep loading: one bad model must not kill the worker
                replies.error(request, error)
            else:
                replies.send(request, reply)
        except OSError:  # the parent is gone: nobody is waiting for the rest
            return


def serve_connection(host: ModelHost, block: BatchBlock, connection: Connection) -> None:
    """Answer control messages until "stop" or the parent's end closes.

    The loop of a local worker process, and of a Ray actor on the server's own node (run on a
    thread there), so both speak exactly the protocol in this module's docstring. Batches and
    unloads run on this thread; loads on a daemon thread beside it (an unfinished load must
    not keep a stopping worker alive)."""
    replies = _Replies(connection)
    loads: queue.Queue = queue.Queue()
    threading.Thread(target=_load_in_order, args=(host, replies, loads), name="shoal-loader", daemon=True).start()
    try:
        while True:
            try:
                message = decode_message(connection.recv_bytes())
            except (EOFError, OSError):
                return
            op = message.get("op")
            try:
                if op == "run":
                    reply = host.run_block(block, message["variant"], int(message["batch_size"]), bool(message.get("burst", False)),
                                           int(message.get("slot", 0)))
                    replies.send(message, {"op": "done", "batch_id": message["batch_id"], **reply})
                elif op == "load":
                    loads.put(message)
                elif op == "unload":
                    host.unload(message["variant"])
                    replies.send(message, {"op": "unloaded", "variant": message["variant"]})
                elif op == "stop":
                    return
                else:
                    replies.send(message, {"op": "error", "message": f"unknown op {op!r}"})
            except Exception as error:  # report and keep serving: one bad batch must not kill the worker
                replies.error(message, error)
    finally:  # loads not begun are dropped: the parent stopped or went away
        try:
            while True:
                loads.get_nowait()
        except queue.Empty:
            pass
        loads.put(None)


def worker_main(config: WorkerConfig, connection: Connection) -> None:
    """Entry point of the worker process (spawned, never forked: ONNX Runtime owns threads)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    block = BatchBlock.attach(config.shared_memory_name, config.shared_memory_bytes)
    host = ModelHost(config.device, config.intra_op_threads, config.burst_threads)
    _send(connection, {"op": "ready", "pid": os.getpid(), "request_id": 0})
    try:
        serve_connection(host, block, connection)
    finally:
        host.sessions.clear()
        block.release()
