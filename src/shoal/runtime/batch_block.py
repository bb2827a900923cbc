"""One shared-memory block per worker that carries a batch's tensors between two processes.

The block holds `BATCH_SLOTS` batches at once, each in a slot of its own (inputs in the slot's
first half, outputs in its second), so the control connection (a pipe to a local worker
process, a Unix socket to a Ray actor on the server's node) carries only a few numbers per
batch: nothing is pickled and the bytes are copied once on each side. Two slots let the parent
write the next batch while the worker still runs the current one (the scheduler's send-ahead),
so a worker goes from one batch to the next without waiting for the parent's event loop.

The process that creates the block owns it and unlinks it; the other side only attaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

__all__ = ["BATCH_SLOTS", "DEFAULT_BLOCK_BYTES", "BatchBlock", "items_per_batch"]

BATCH_SLOTS = 2
"""Batches a block holds at once: the one a worker runs and the one sent ahead of it. Both
sides derive the layout from it, so it is a constant rather than an argument."""

DEFAULT_BLOCK_BYTES = BATCH_SLOTS * 64 * 1024 * 1024
"""A worker's block unless told otherwise: 32 MiB of inputs per batch (a batch of 160 RGB
images at 128 px). Pages are only backed once written, so the unused part costs no memory."""


_created_names: set[str] = set()
"""The blocks this process created and has not released (`BatchBlock.created_names`)."""


def items_per_batch(block_bytes: int, item_shape: Sequence[int]) -> int:
    """The most float32 items of `item_shape` one batch of a block of `block_bytes` holds (at
    least 1): the cap on a queue's batches, since a larger batch fails every request in it."""
    return max(1, _side_bytes(block_bytes) // max(1, 4 * math.prod(item_shape)))


def _side_bytes(block_bytes: int) -> int:
    """A batch's room for its inputs (or its outputs): half of one of the block's slots."""
    return block_bytes // BATCH_SLOTS // 2


class BatchBlock:
    """Float32 batches in, float32 batches out, through one named shared-memory block.

    Slot `s` starts at `s * slot_bytes`; its inputs fill the first `side_bytes`, its outputs
    the next. Which slot a batch uses is the writer's choice, named in the batch's message."""

    def __init__(self, memory: SharedMemory, size_bytes: int, *, owner: bool):
        self._memory = memory
        self.size_bytes = size_bytes
        self.owner = owner

    @classmethod
    def create(cls, size_bytes: int) -> "BatchBlock":
        block = cls(SharedMemory(create=True, size=size_bytes), size_bytes, owner=True)
        _created_names.add(block.name)
        return block

    @staticmethod
    def created_names() -> frozenset[str]:
        """The names of the blocks this process created and still holds: the server's own
        objects, which a client may not register as its shared memory (`shoal.runtime.shared_memory`)."""
        return frozenset(_created_names)

    @classmethod
    def attach(cls, name: str, size_bytes: int, *, tracked: bool = True) -> "BatchBlock":
        """Attach to a block another process created.

        `tracked=False` is for a process that does not share its creator's resource tracker (a
        Ray actor): otherwise that process's own tracker would unlink the block when the process
        exits, pulling it from under its owner (Python < 3.13 registers every attach)."""
        memory = SharedMemory(name=name)
        if not tracked:
            resource_tracker.unregister(memory._name, "shared_memory")  # noqa: SLF001 (no public way before 3.13)
        return cls(memory, size_bytes, owner=False)

    @property
    def name(self) -> str:
        return self._memory.name

    @property
    def slot_bytes(self) -> int:
        return self.size_bytes // BATCH_SLOTS

    @property
    def side_bytes(self) -> int:
        """The most bytes of inputs (or of outputs) one batch may have."""
        return _side_bytes(self.size_bytes)

    def _offset(self, slot: int, outputs: bool) -> int:
        if not 0 <= slot < BATCH_SLOTS:
            raise ValueError(f"slot {slot} is not one of the block's {BATCH_SLOTS}")
        return slot * self.slot_bytes + (self.side_bytes if outputs else 0)

    def write_inputs(self, items: Sequence[np.ndarray], slot: int = 0) -> None:
        """Copy equally shaped items into a slot's inputs as one (len(items), *shape) batch."""
        item_shape = items[0].shape
        needed = len(items) * items[0].size * 4  # float32 in the block; np.prod here cost ~3% of the frontend's CPU on light models
        if needed > self.side_bytes:
            raise ValueError(f"batch of {needed} bytes exceeds the worker's shared block ({self.side_bytes} bytes per batch)")
        view = np.ndarray((len(items), *item_shape), dtype=np.float32, buffer=self._memory.buf, offset=self._offset(slot, False))
        for index, item in enumerate(items):
            view[index] = item
        del view  # a live view would keep the block from closing

    def inputs(self, batch_size: int, item_shape: Sequence[int], slot: int = 0) -> np.ndarray:
        """A slot's inputs as a batch (a view: valid until that slot's next write)."""
        return np.ndarray((batch_size, *item_shape), dtype=np.float32, buffer=self._memory.buf, offset=self._offset(slot, False))

    def write_outputs(self, outputs: np.ndarray, slot: int = 0) -> list[int]:
        """Copy a batch's outputs into its slot; returns their shape for the reply."""
        if outputs.nbytes > self.side_bytes:
            raise ValueError(f"output of {outputs.nbytes} bytes does not fit the shared block ({self.side_bytes} bytes per batch)")
        target = np.ndarray(outputs.shape, dtype=np.float32, buffer=self._memory.buf, offset=self._offset(slot, True))
        target[...] = outputs
        del target
        return list(outputs.shape)

    def read_outputs(self, shape: Sequence[int], slot: int = 0) -> np.ndarray:
        """A copy of a slot's outputs, so the slot can take the next batch at once."""
        view = np.ndarray(tuple(shape), dtype=np.float32, buffer=self._memory.buf, offset=self._offset(slot, True))
        outputs = view.copy()
        del view
        return outputs

    def release(self) -> None:
        """Close this side's mapping; the owner also removes the block. Safe to call twice."""
        if self._memory is None:
            return
        if self.owner:
            _created_names.discard(self._memory.name)
        try:
            self._memory.close()
            if self.owner:
                self._memory.unlink()
        except (FileNotFoundError, BufferError):
            pass
        self._memory = None
