"""The parent's side of one worker process: start, load, run a batch, notice a crash.

All methods are coroutines on the server's event loop. The control pipe and the shared block
are a `WorkerChannel`; the process sentinel is watched with `add_reader` too, so a worker that
dies (even by SIGKILL) fails its pending calls at once with WorkerFailedError instead of
leaving them hanging.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable, Sequence

import numpy as np

from shoal.runtime.backend import counted_load
from shoal.runtime.batch_block import DEFAULT_BLOCK_BYTES, BatchBlock
from shoal.runtime.errors import WorkerFailedError
from shoal.runtime.worker import WorkerConfig, worker_main
from shoal.runtime.worker_channel import OutputsCallback, WorkerChannel, load_message

__all__ = ["WorkerHandle"]

logger = logging.getLogger(__name__)


class WorkerHandle:
    def __init__(
        self,
        worker_id: str,
        *,
        device: str = "cpu",
        intra_op_threads: int = 1,
        burst_threads: int = 0,
        shared_memory_bytes: int = DEFAULT_BLOCK_BYTES,
        on_exit: Callable[["WorkerHandle"], None] | None = None,
    ):
        self.worker_id = worker_id
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.burst_threads = burst_threads
        self.shared_memory_bytes = shared_memory_bytes
        self.on_exit = on_exit
        self.process: multiprocessing.process.BaseProcess | None = None
        self.loaded_variants: dict[str, float] = {}  # variant key -> load time in ms
        self.busy_until_ms = 0.0  # predicted end of the running batch, for admission estimates
        self.loading = 0  # loads in flight (batches run beside them, slower: Scheduler._left_to_others)
        self._channel: WorkerChannel | None = None
        self._stopping = False
        self.alive = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, timeout_s: float = 60.0) -> None:
        block = BatchBlock.create(self.shared_memory_bytes)
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        config = WorkerConfig(self.worker_id, self.device, self.intra_op_threads, block.name, self.shared_memory_bytes, self.burst_threads)
        self.process = context.Process(target=worker_main, args=(config, child_end), name=f"shoal-worker-{self.worker_id}", daemon=True)
        self.process.start()
        child_end.close()
        self._channel = WorkerChannel(self.worker_id, parent_end, block, on_closed=self._on_process_exit)
        ready = self._channel.expect_reply()
        asyncio.get_running_loop().add_reader(self.process.sentinel, self._on_process_exit)
        self.alive = True
        await asyncio.wait_for(ready, timeout_s)

    def _on_process_exit(self) -> None:
        if not self.alive:
            return
        self.alive = False
        try:
            asyncio.get_running_loop().remove_reader(self.process.sentinel)
        except (ValueError, OSError):
            pass
        self.process.join(timeout=0)
        code = self.process.exitcode
        self._channel.close(f"worker {self.worker_id} exited (code {code}) while holding this request")
        self.loaded_variants.clear()
        if not self._stopping:
            logger.error("worker %s (pid %s) exited with code %s", self.worker_id, self.pid, code)
            if self.on_exit:
                self.on_exit(self)

    def _live_channel(self) -> WorkerChannel:
        if not self.alive or self._channel is None:
            raise WorkerFailedError(f"worker {self.worker_id} is not running")
        return self._channel

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
        message = load_message(variant_key, path, input_name, output_name, input_shape, warmup=warmup,
                               profile_batch_sizes=profile_batch_sizes, profile_repeats=profile_repeats)
        return await counted_load(self, variant_key, self._live_channel().load(message))

    async def unload(self, variant_key: str) -> None:
        self.loaded_variants.pop(variant_key, None)  # no batch of it is sent after the unload
        await self._live_channel().unload(variant_key)

    async def run(self, variant_key: str, items: Sequence[np.ndarray], burst: bool = False,
                  on_outputs: OutputsCallback | None = None) -> tuple[np.ndarray, float]:  # fmt: skip
        """Run one batch (items of equal shape); returns (outputs copied out of shared memory, compute ms)."""
        return await self._live_channel().run(variant_key, items, burst, on_outputs)

    async def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        if self.alive:
            self._channel.send_stop()
            deadline = asyncio.get_running_loop().time() + timeout_s
            # The pipe can close a moment before the process is gone: wait for the process itself.
            while (self.alive or self.process.is_alive()) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            if self.alive or self.process.is_alive():
                self.process.kill()
                await asyncio.sleep(0.05)
        if self.alive:  # the sentinel callback may not have run yet
            self._on_process_exit()
        if self._channel is not None:
            self._channel.close(f"worker {self.worker_id} stopped")
