"""The parent's end of a worker's control connection and shared block, spoken from the event loop.

One `WorkerChannel` per worker process on this machine: a local worker (a pipe) or a Ray actor
on the server's own node (a Unix socket). Replies are read with `add_reader`, so waiting for a
batch costs no thread. Messages are the small JSON ones of `shoal.runtime.worker`; tensors go
through the `BatchBlock`. Each request carries a number that its reply repeats: a worker loads
on a thread beside its batches, so a load's reply may come before or after a batch's.

A batch's outputs are handed on (`run`'s `on_outputs`) from the reply's own read callback, not
after the awaiting coroutine resumes: on a saturated event loop every hand-off through the
ready queue costs a whole loop pass (measured at 2x overload on a light model: ~1.5-3 ms each).
They are handed on right after the batch's own future is resolved, so that in the next pass the
batch's coroutine runs first (and its worker loop dispatches the next batch) and the requests'
handlers, with their response work, after it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

import numpy as np

from shoal.runtime.batch_block import BATCH_SLOTS, BatchBlock
from shoal.runtime.errors import ModelLoadError, WorkerFailedError
from shoal.runtime.worker import decode_message, encode_message

__all__ = ["OutputsCallback", "WorkerChannel", "load_message"]

logger = logging.getLogger(__name__)

OutputsCallback = Callable[[np.ndarray, float], None]
"""Called with a batch's outputs and its compute milliseconds as soon as they are in."""

ReplyHook = Callable[[dict], Callable[[], None] | None]
"""Runs on a successful reply inside the read callback, before its future resolves (what it
raises fails the future); what it returns, if anything, runs right after the future resolved."""


def load_message(
    variant_key: str, path: str, input_name: str, output_name: str, input_shape: Sequence[int], *,
    warmup: int = 2, profile_batch_sizes: Sequence[int] = (), profile_repeats: int = 5,
) -> dict:
    """The "load" message every kind of worker understands (see shoal.runtime.worker)."""
    return {
        "op": "load", "variant": variant_key, "path": path, "input_name": input_name, "output_name": output_name,
        "input_shape": list(input_shape), "warmup": warmup, "profile_batch_sizes": list(profile_batch_sizes),
        "profile_repeats": profile_repeats,
    }


class WorkerChannel:
    def __init__(self, worker_id: str, connection: Connection, block: BatchBlock, *, on_closed: Callable[[], None]):
        """`on_closed` runs when the other end goes away (its process died); the owner then
        calls `close` with the reason its pending requests fail with."""
        self.worker_id = worker_id
        self.block = block
        self._connection = connection
        self._on_closed = on_closed
        # Each pending request by its number: its future, and what to do with the reply before
        # resolving it. Number 0 is the worker's unasked "ready".
        self._pending: dict[int, tuple[asyncio.Future, ReplyHook | None]] = {}
        self._request_ids = itertools.count(1)
        # A batch holds a slot of the block from writing its inputs until its outputs are read:
        # at most BATCH_SLOTS batches are in flight, the worker running them in order.
        self._slots_left = asyncio.Semaphore(BATCH_SLOTS)
        self._free_slots = list(range(BATCH_SLOTS))
        self._batches_in_flight = 0
        self._batch_counter = 0
        self.closed = False
        asyncio.get_running_loop().add_reader(connection.fileno(), self._on_readable)

    def expect_reply(self, request_id: int = 0, on_reply: ReplyHook | None = None) -> asyncio.Future:
        """A future for the reply numbered `request_id` (0: the worker's unasked "ready"), with
        `on_reply` (see `ReplyHook`) run on it from the read callback."""
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, on_reply)
        return future

    def _on_readable(self) -> None:
        try:
            payload = self._connection.recv_bytes()
        except (EOFError, OSError):
            # An fd at EOF stays readable: stop watching it now, whatever the owner does next.
            asyncio.get_running_loop().remove_reader(self._connection.fileno())
            self._on_closed()
            return
        message = decode_message(payload)
        pending = self._pending.pop(message.get("request_id"), None)
        if pending is None:
            logger.warning("worker %s sent an unexpected message %s", self.worker_id, message.get("op"))
            return
        future, on_reply = pending
        if future.done():
            return
        if message.get("op") == "error":
            future.set_exception(RuntimeError(message.get("message", "worker error")))
            return
        then = None
        if on_reply is not None:
            try:
                then = on_reply(message)
            except Exception as error:
                future.set_exception(error)
                return
        future.set_result(message)
        if then is not None:
            # After resolving: whoever awaits the reply resumes first in the next pass, before
            # anything `then` wakes. What it raises is logged; the awaiting side still has the reply.
            try:
                then()
            except Exception:
                logger.exception("worker %s: handing a reply on failed", self.worker_id)

    def request(self, message: dict, on_reply: ReplyHook | None = None) -> asyncio.Future:
        if self.closed:
            raise WorkerFailedError(f"worker {self.worker_id} is not running")
        request_id = next(self._request_ids)
        payload = encode_message({**message, "request_id": request_id})  # before the reply is expected: it may raise
        future = self.expect_reply(request_id, on_reply)
        try:
            self._connection.send_bytes(payload)
        except (BrokenPipeError, ConnectionResetError) as error:  # it died; its exit is not noticed yet
            del self._pending[request_id]
            raise WorkerFailedError(f"worker {self.worker_id} exited before this request reached it ({error})") from None
        except OSError as error:
            del self._pending[request_id]
            raise WorkerFailedError(f"worker {self.worker_id} cannot be reached: {error}") from None
        return future

    def send_stop(self) -> None:
        if not self.closed:
            try:
                self._connection.send_bytes(encode_message({"op": "stop"}))
            except OSError:
                pass

    async def load(self, message: dict) -> dict:
        """Load and warm a variant; a model the worker cannot open is a ModelLoadError naming it."""
        try:
            return await self.request(message)
        except RuntimeError as error:  # the worker answered with an error (a crash is WorkerFailedError)
            raise ModelLoadError(f"variant {message['variant']!r} could not be loaded on worker {self.worker_id}: {error}") from None

    async def unload(self, variant_key: str) -> None:
        await self.request({"op": "unload", "variant": variant_key})

    async def run(self, variant_key: str, items: Sequence[np.ndarray], burst: bool = False,
                  on_outputs: OutputsCallback | None = None) -> tuple[np.ndarray, float]:  # fmt: skip
        """One batch (items of equal shape); returns (outputs copied out of the block, compute ms).
        `burst`: every other worker is idle, so the worker may run it on its wider session.
        `on_outputs` gets the same outputs and compute ms in the reply's read callback, right
        after this coroutine's own wake-up was scheduled (so it returns before whatever
        `on_outputs` wakes runs).

        Up to BATCH_SLOTS calls may be in flight (each in a slot of the block); the worker runs
        them in the order they were sent, and a further call waits for a slot."""
        async with self._slots_left:
            slot = self._free_slots.pop()
            self._batches_in_flight += 1
            try:
                if self.closed:
                    raise WorkerFailedError(f"worker {self.worker_id} is not running")
                self.block.write_inputs(items, slot)
                self._batch_counter += 1
                received: list[np.ndarray] = []

                def take_outputs(reply: dict) -> Callable[[], None] | None:  # the slot is ours until this returns
                    received.append(self.block.read_outputs(reply["output_shape"], slot))
                    return None if on_outputs is None else functools.partial(on_outputs, received[0], reply["compute_ms"])

                message = {"op": "run", "batch_id": self._batch_counter, "variant": variant_key, "batch_size": len(items), "burst": burst, "slot": slot}
                reply = await self.request(message, take_outputs)
                # A reply that arrived is good even if the channel closed since (the worker exited
                # right after answering): its outputs were copied out as it arrived.
                return received[0], reply["compute_ms"]
            finally:
                self._free_slots.append(slot)
                self._batches_in_flight -= 1
                if self.closed and self._batches_in_flight == 0:
                    self.block.release()

    def close(self, reason: str) -> None:
        """Fail every pending request with `reason`, stop reading, give the block back. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            asyncio.get_running_loop().remove_reader(self._connection.fileno())
        except (ValueError, OSError):
            pass
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(WorkerFailedError(reason))
        self._connection.close()
        if self._batches_in_flight == 0:  # else the last batch in flight releases it when it is done with it
            self.block.release()
