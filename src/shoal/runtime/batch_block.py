"""One shared-memory block per worker that carries a batch's tensors between two processes.

Inputs go in the first half, outputs in the second, so the control connection (a pipe to a
local worker process, a Unix socket to a Ray actor on the server's node) carries only a few
numbers per batch: nothing is pickled and the bytes are copied once on each side.

The process that creates the block owns it and unlinks it; the other side only attaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

__all__ = ["BatchBlock"]


class BatchBlock:
    """A float32 batch in, a float32 batch out, through one named shared-memory block."""

    def __init__(self, memory: SharedMemory, size_bytes: int, *, owner: bool):
        self._memory = memory
        self.size_bytes = size_bytes
        self.owner = owner

    @classmethod
    def create(cls, size_bytes: int) -> "BatchBlock":
        return cls(SharedMemory(create=True, size=size_bytes), size_bytes, owner=True)

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
    def half_bytes(self) -> int:
        return self.size_bytes // 2

    def write_inputs(self, items: Sequence[np.ndarray]) -> None:
        """Copy equally shaped items into the input half as one (len(items), *shape) batch."""
        item_shape = items[0].shape
        needed = len(items) * items[0].size * 4  # float32 in the block; np.prod here cost ~3% of the frontend's CPU on light models
        if needed > self.half_bytes:
            raise ValueError(f"batch of {needed} bytes exceeds the worker's shared block ({self.half_bytes} bytes per side)")
        view = np.ndarray((len(items), *item_shape), dtype=np.float32, buffer=self._memory.buf, offset=0)
        for index, item in enumerate(items):
            view[index] = item
        del view  # a live view would keep the block from closing

    def inputs(self, batch_size: int, item_shape: Sequence[int]) -> np.ndarray:
        """The input half as a batch (a view: valid until the next write)."""
        return np.ndarray((batch_size, *item_shape), dtype=np.float32, buffer=self._memory.buf, offset=0)

    def write_outputs(self, outputs: np.ndarray) -> list[int]:
        """Copy a batch's outputs into the output half; returns their shape for the reply."""
        if outputs.nbytes > self.half_bytes:
            raise ValueError(f"output of {outputs.nbytes} bytes does not fit the shared block ({self.half_bytes} bytes per side)")
        target = np.ndarray(outputs.shape, dtype=np.float32, buffer=self._memory.buf, offset=self.half_bytes)
        target[...] = outputs
        del target
        return list(outputs.shape)

    def read_outputs(self, shape: Sequence[int]) -> np.ndarray:
        """A copy of the output half, so the block can take the next batch at once."""
        view = np.ndarray(tuple(shape), dtype=np.float32, buffer=self._memory.buf, offset=self.half_bytes)
        outputs = view.copy()
        del view
        return outputs

    def release(self) -> None:
        """Close this side's mapping; the owner also removes the block. Safe to call twice."""
        if self._memory is None:
            return
        try:
            self._memory.close()
            if self.owner:
                self._memory.unlink()
        except (FileNotFoundError, BufferError):
            pass
        self._memory = None
