"""The parent's side of one worker process: start, load, run a batch, notice a crash.

All methods are coroutines on the server's event loop. Replies are read with `add_reader` on
the pipe, so waiting for a batch costs no thread; the process sentinel is watched the same way,
so a worker that dies (even by SIGKILL) fails its pending calls at once with WorkerFailedError
instead of leaving them hanging.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
from collections import deque
from collections.abc import Callable, Sequence
import numpy as np

from shoal.runtime.batch_block import BatchBlock
from shoal.runtime.errors import ModelLoadError, WorkerFailedError
from shoal.runtime.worker import WorkerConfig, worker_main

__all__ = ["WorkerHandle"]

logger = logging.getLogger(__name__)


class WorkerHandle:
    def __init__(
        self,
        worker_id: str,
        *,
        device: str = "cpu",
        intra_op_threads: int = 1,
        shared_memory_bytes: int = 64 * 1024 * 1024,
        on_exit: Callable[["WorkerHandle"], None] | None = None,
    ):
        self.worker_id = worker_id
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.shared_memory_bytes = shared_memory_bytes
        self.on_exit = on_exit
        self.process: multiprocessing.process.BaseProcess | None = None
        self.loaded_variants: dict[str, float] = {}  # variant key -> load time in ms
        self.busy_until_ms = 0.0  # predicted end of the running batch, for admission estimates
        self._block: BatchBlock | None = None
        self._connection = None
        self._pending: deque[asyncio.Future] = deque()
        self._run_lock = asyncio.Lock()
        self._batch_counter = 0
        self._stopping = False
        self.alive = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, timeout_s: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        self._block = BatchBlock.create(self.shared_memory_bytes)
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        config = WorkerConfig(self.worker_id, self.device, self.intra_op_threads, self._block.name, self.shared_memory_bytes)
        self.process = context.Process(target=worker_main, args=(config, child_end), name=f"shoal-worker-{self.worker_id}", daemon=True)
        self.process.start()
        child_end.close()
        self._connection = parent_end
        ready = loop.create_future()
        self._pending.append(ready)
        loop.add_reader(parent_end.fileno(), self._on_readable)
        loop.add_reader(self.process.sentinel, self._on_process_exit)
        self.alive = True
        await asyncio.wait_for(ready, timeout_s)

    def _on_readable(self) -> None:
        try:
            payload = self._connection.recv_bytes()
        except (EOFError, OSError):
            self._on_process_exit()
            return
        message = json.loads(payload)
        if not self._pending:
            logger.warning("worker %s sent an unexpected message %s", self.worker_id, message.get("op"))
            return
        future = self._pending.popleft()
        if future.done():
            return
        if message.get("op") == "error":
            future.set_exception(RuntimeError(message.get("message", "worker error")))
        else:
            future.set_result(message)

    def _on_process_exit(self) -> None:
        if not self.alive:
            return
        self.alive = False
        loop = asyncio.get_running_loop()
        for fd in (self._connection.fileno(), self.process.sentinel):
            try:
                loop.remove_reader(fd)
            except (ValueError, OSError):
                pass
        self.process.join(timeout=0)
        code = self.process.exitcode
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(WorkerFailedError(f"worker {self.worker_id} exited (code {code}) while holding this request"))
        self._release_memory()
        self.loaded_variants.clear()
        if not self._stopping:
            logger.error("worker %s (pid %s) exited with code %s", self.worker_id, self.pid, code)
            if self.on_exit:
                self.on_exit(self)

    def _request(self, message: dict) -> asyncio.Future:
        if not self.alive:
            raise WorkerFailedError(f"worker {self.worker_id} is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        try:
            self._connection.send_bytes(json.dumps(message).encode())
        except OSError as error:
            self._pending.remove(future)
            raise WorkerFailedError(f"worker {self.worker_id} cannot be reached: {error}") from None
        return future

    async def load(
        self,
        variant_key: str,
        path: str,
        input_name: str,
        output_name: str,
        input_shape: Sequence[int],
        *,
        warmup: int = 2,
        profile_batch_sizes: Sequence[int] = (),
        profile_repeats: int = 5,
    ) -> dict:
        """Load and warm a variant; the reply holds `load_ms` and warm-up latencies per batch size.

        A model the worker cannot open raises ModelLoadError naming the variant and the reason."""
        request = self._request(
            {
                "op": "load",
                "variant": variant_key,
                "path": path,
                "input_name": input_name,
                "output_name": output_name,
                "input_shape": list(input_shape),
                "warmup": warmup,
                "profile_batch_sizes": list(profile_batch_sizes),
                "profile_repeats": profile_repeats,
            }
        )
        try:
            reply = await request
        except RuntimeError as error:  # the worker answered with an error (a crash is WorkerFailedError)
            raise ModelLoadError(f"variant {variant_key!r} could not be loaded on worker {self.worker_id}: {error}") from None
        self.loaded_variants[variant_key] = reply["load_ms"]
        return reply

    async def unload(self, variant_key: str) -> None:
        await self._request({"op": "unload", "variant": variant_key})
        self.loaded_variants.pop(variant_key, None)

    async def run(self, variant_key: str, items: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
        """Run one batch (items of equal shape); returns (outputs copied out of shared memory, compute ms)."""
        async with self._run_lock:
            if not self.alive:
                raise WorkerFailedError(f"worker {self.worker_id} is not running")
            self._block.write_inputs(items)
            self._batch_counter += 1
            reply = await self._request({"op": "run", "batch_id": self._batch_counter, "variant": variant_key, "batch_size": len(items)})
            return self._block.read_outputs(reply["output_shape"]), reply["compute_ms"]

    async def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        if self.alive:
            try:
                self._connection.send_bytes(json.dumps({"op": "stop"}).encode())
            except OSError:
                pass
            deadline = asyncio.get_running_loop().time() + timeout_s
            while self.alive and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            if self.alive:
                self.process.kill()
                await asyncio.sleep(0.05)
        if self.alive:  # the sentinel callback may not have run yet
            self._on_process_exit()
        self._release_memory()

    def _release_memory(self) -> None:
        if self._block is not None:
            self._block.release()
            self._block = None
