"""Triton's system shared-memory extension: tensors a client on the same host passes in memory.

A client creates a POSIX shared-memory object (`shm_open`, e.g. `/dev/shm/images`), registers a
window of it with the server under a region name (`POST /v2/systemsharedmemory/region/{name}/register`
with its key, offset and size, or gRPC `SystemSharedMemoryRegister`), and then names the region
in an input's or a requested output's `parameters` (`shared_memory_region`,
`shared_memory_byte_size`, optionally `shared_memory_offset`) instead of sending the bytes.
tritonclient's `InferInput.set_shared_memory` and `InferRequestedOutput.set_shared_memory` do this.

Why serve it: a 128 px FP32 image is 196 KB, which over HTTP is read from the socket, parsed
and copied by the frontend; from a region it is one copy into the request's tensor.

Inputs are copied out of the region when the request is decoded, so a client may reuse it once
it has its answer and an unregistered region is never read afterwards. Outputs are written into
the region before the answer is sent.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.runtime.errors import BadRequestError, NotFoundError

__all__ = ["SharedMemoryRef", "SystemSharedMemory", "shared_memory_ref"]

MAX_KEY_LENGTH = 255
"""The longest object name POSIX shared memory takes on Linux (a file name in /dev/shm)."""


@dataclass(frozen=True)
class SharedMemoryRef:
    """Where one tensor lies: `byte_size` bytes at `offset` into a registered region."""

    region: str
    byte_size: int
    offset: int = 0


def shared_memory_ref(parameters: Mapping[str, Any], what: str) -> SharedMemoryRef | None:
    """The region a tensor's `parameters` name (None when they name none), checked: a region
    name, a byte size and, if given, an offset, both non-negative integers."""
    if not any(key.startswith("shared_memory_") for key in parameters):
        return None
    known = {"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"}
    unknown = sorted(key for key in parameters if key.startswith("shared_memory_") and key not in known)
    if unknown:
        raise BadRequestError(f"{what}: unknown parameter {unknown[0]!r}; shared memory takes {sorted(known)}")
    region = parameters.get("shared_memory_region")
    if not isinstance(region, str) or not region:
        raise BadRequestError(f"{what}: 'shared_memory_region' must name a registered region (a non-empty string)")
    numbers = {}
    for key, default in (("shared_memory_byte_size", None), ("shared_memory_offset", 0)):
        value = parameters.get(key, default)
        if value is None:
            raise BadRequestError(f"{what}: '{key}' is needed with 'shared_memory_region'")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequestError(f"{what}: '{key}' must be a non-negative integer, got {value!r}")
        numbers[key] = value
    return SharedMemoryRef(region, numbers["shared_memory_byte_size"], numbers["shared_memory_offset"])


def _object_name(key: str) -> str:
    """`key` as a shm_open name ("/name"): one name with or without its leading slash, as
    tritonclient (`create_shared_memory_region(..., "/name", ...)`) and Python's
    `multiprocessing.shared_memory` ("name") write it; never a path elsewhere."""
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > MAX_KEY_LENGTH:
        raise BadRequestError(f"key {key!r} is not a shared-memory object name; give the name the client created it with, like '/images'")
    return "/" + name


@dataclass
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SystemSharedMemory:
    """The regions registered with one server, shared by its HTTP and gRPC frontends."""

    def __init__(self) -> None:
        self._regions: dict[str, _Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map `byte_size` bytes at `offset` of the object `key` under `name`; a name already
        registered is refused (Triton's rule: unregister it first)."""
        if not isinstance(name, str) or not name:
            raise BadRequestError("a region needs a non-empty name")
        if not isinstance(key, str):
            raise BadRequestError(f"region {name!r}: 'key' must be a string, the shared-memory object's name")
        for field_name, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadRequestError(f"region {name!r}: '{field_name}' must be a non-negative integer, got {value!r}")
        if byte_size == 0:
            raise BadRequestError(f"region {name!r}: 'byte_size' must be at least 1")
        if name in self._regions:
            raise BadRequestError(f"region {name!r} is already registered; unregister it first")
        object_name = _object_name(key)
        # multiprocessing.shared_memory would do, but before Python 3.13 attaching also hands
        # the object to the resource tracker, which deletes it when this server exits: the
        # client's memory. `_posixshmem` is the module it opens objects with.
        import _posixshmem

        try:
            descriptor = _posixshmem.shm_open(object_name, os.O_RDWR, 0)
        except FileNotFoundError:
            raise NotFoundError(f"region {name!r}: no shared-memory object {key!r}; create it before registering it") from None
        except OSError as error:
            raise BadRequestError(f"region {name!r}: cannot open shared-memory object {key!r}: {error.strerror}") from None
        try:
            object_size = os.fstat(descriptor).st_size
            if offset + byte_size > object_size:
                raise BadRequestError(
                    f"region {name!r}: offset {offset} + byte_size {byte_size} runs past the end of {key!r} ({object_size} bytes)"
                )
            mapping = mmap.mmap(descriptor, offset + byte_size)
        finally:
            os.close(descriptor)  # the mapping keeps the memory
        self._regions[name] = _Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str = "") -> None:
        """Forget `name`'s region, or every region with "" (as Triton: an unknown name is no error)."""
        names = list(self._regions) if not name else [name] if name in self._regions else []
        for region_name in names:
            self._regions.pop(region_name).mapping.close()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """Every region's name, key, offset and size, or `name`'s alone (404 when not registered)."""
        if not name:
            return [region.status() for region in self._regions.values()]
        return [self._region(name).status()]

    def read(self, ref: SharedMemoryRef, what: str) -> bytes:
        """A copy of the bytes `ref` names (the client may overwrite them once answered)."""
        start = self._bounds(ref, what)
        return self._regions[ref.region].mapping[start : start + ref.byte_size]

    def write(self, ref: SharedMemoryRef, data: bytes | memoryview, what: str) -> None:
        """Put `data` at the start of the window `ref` names, which must hold it."""
        start = self._bounds(ref, what)
        if len(data) > ref.byte_size:
            raise BadRequestError(f"{what}: needs {len(data)} bytes but shared_memory_byte_size is {ref.byte_size}; ask for a window that holds it")
        self._regions[ref.region].mapping[start : start + len(data)] = data

    def close(self) -> None:
        self.unregister()

    def _region(self, name: str) -> _Region:
        region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"shared-memory region {name!r} is not registered; register it first (POST /v2/systemsharedmemory/region/{name}/register)")
        return region

    def _bounds(self, ref: SharedMemoryRef, what: str) -> int:
        region = self._regions.get(ref.region)
        if region is None:  # the request is at fault (400), not a missing resource of the path (404)
            raise BadRequestError(f"{what}: shared-memory region {ref.region!r} is not registered; register it first")
        if ref.offset + ref.byte_size > region.byte_size:
            raise BadRequestError(
                f"{what}: shared_memory_offset {ref.offset} + shared_memory_byte_size {ref.byte_size} runs past region {ref.region!r} ({region.byte_size} bytes)"
            )
        return region.offset + ref.offset
