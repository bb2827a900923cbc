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

What it guards against, since a registration makes the server open an object with its own
rights: registrations come only from the server's own host (shared memory cannot be reached
from elsewhere anyway), need the admin token when the server has one, and may not name the
server's own objects (its workers' batch blocks). The objects are read and written with
pread/pwrite, never mapped: a client that shrinks its object after registering it then gets an
error instead of killing the server with SIGBUS on the next access. Linux (POSIX shared memory
under /dev/shm).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shoal.runtime.errors import BadRequestError, ForbiddenError, NotFoundError, PayloadTooLargeError

__all__ = ["SharedMemoryRef", "SystemSharedMemory", "check_same_host", "names_shared_memory", "shared_memory_ref"]

MAX_KEY_LENGTH = 255
"""The longest object name POSIX shared memory takes on Linux (a file name in /dev/shm)."""
MAX_REGIONS = 256
"""Regions registered at once: each holds a file descriptor of the server's."""
SHM_DIRECTORY = "/dev/shm"
"""Where Linux keeps POSIX shared-memory objects (to know the server's own by their files)."""


def check_same_host(peer_host: str | None) -> None:
    """Refuse a registration from another host: only a client on the server's host can share
    memory with it, and one elsewhere could only make the server open objects of its host.
    `peer_host` is the client's address (None or "" for a Unix socket, which is local)."""
    if not peer_host:
        return
    try:
        address = ipaddress.ip_address(peer_host.strip("[]"))
        # an IPv4 client of a dual-stack socket shows as ::ffff:127.0.0.1
        local = address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)
    except ValueError:
        local = peer_host == "localhost"
    if not local:
        raise ForbiddenError(f"shared memory can only be registered from the server's own host (this request came from {peer_host})")


@dataclass(frozen=True)
class SharedMemoryRef:
    """Where one tensor lies: `byte_size` bytes at `offset` into a registered region."""

    region: str
    byte_size: int
    offset: int = 0


def names_shared_memory(parameter_names: Iterable[str]) -> bool:
    """Whether a tensor's parameters put it in shared memory (any `shared_memory_*` one)."""
    return any(name.startswith("shared_memory_") for name in parameter_names)


def shared_memory_ref(parameters: Mapping[str, Any], what: str) -> SharedMemoryRef | None:
    """The region a tensor's `parameters` name (None when they name none), checked: a region
    name, a byte size and, if given, an offset, both non-negative integers."""
    if not names_shared_memory(parameters):
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
    try:
        encodable = bool(name.encode())
    except UnicodeEncodeError:  # a lone surrogate from JSON's \ud800
        encodable = False
    if not encodable or "/" in name or name in (".", "..") or "\0" in name or len(name) > MAX_KEY_LENGTH:
        raise BadRequestError(f"key {key!r} is not a shared-memory object name; give the name the client created it with, like '/images'")
    return "/" + name


@dataclass
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    descriptor: int

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SystemSharedMemory:
    """The regions registered with one server, shared by its HTTP and gRPC frontends.

    `reserved_names`: the names of the server's own shared-memory objects, which no region may
    be a window of. `max_read_bytes`: the largest input read from a region (the server's
    request-body limit, which a tensor in shared memory must not get around)."""

    def __init__(self, reserved_names: Callable[[], Iterable[str]] = tuple, max_read_bytes: int = 64 * 1024 * 1024) -> None:
        self._regions: dict[str, _Region] = {}
        self.reserved_names = reserved_names
        self.max_read_bytes = max_read_bytes

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Open `byte_size` bytes at `offset` of the object `key` as the region `name`; a name
        already registered is refused (Triton's rule: unregister it first)."""
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
        if len(self._regions) >= MAX_REGIONS:
            raise BadRequestError(f"{MAX_REGIONS} regions are registered already; unregister some first")
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
            status = os.fstat(descriptor)
            if self._is_reserved(status):
                raise BadRequestError(f"region {name!r}: {key!r} is one of this server's own objects; register an object the client created")
            if offset + byte_size > status.st_size:
                raise BadRequestError(
                    f"region {name!r}: offset {offset} + byte_size {byte_size} runs past the end of {key!r} ({status.st_size} bytes)"
                )
        except BaseException:
            os.close(descriptor)
            raise
        self._regions[name] = _Region(name, key, offset, byte_size, descriptor)

    def unregister(self, name: str = "") -> None:
        """Forget `name`'s region, or every region with "" (as Triton: an unknown name is no error)."""
        names = list(self._regions) if not name else [name] if name in self._regions else []
        for region_name in names:
            os.close(self._regions.pop(region_name).descriptor)

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """Every region's name, key, offset and size, or `name`'s alone (404 when not registered)."""
        if not name:
            return [region.status() for region in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"shared-memory region {name!r} is not registered; register it first (POST /v2/systemsharedmemory/region/{name}/register)")
        return [region.status()]

    def read(self, ref: SharedMemoryRef, what: str) -> bytes:
        """A copy of the bytes `ref` names (the client may overwrite them once answered)."""
        if ref.byte_size > self.max_read_bytes:
            raise PayloadTooLargeError(f"{what}: {ref.byte_size} bytes in shared memory exceed the server's limit of {self.max_read_bytes} (--max-body-mb)")
        region, start = self._bounds(ref, what)
        try:
            data = os.pread(region.descriptor, ref.byte_size, start)
        except OSError as error:
            raise BadRequestError(f"{what}: cannot read region {ref.region!r}: {error.strerror}") from None
        if len(data) != ref.byte_size:
            raise BadRequestError(f"{what}: region {ref.region!r} ends early: its object shrank after it was registered; register it again")
        return data

    def write(self, ref: SharedMemoryRef, data: bytes | memoryview, what: str) -> None:
        """Put `data` at the start of the window `ref` names, which must hold it."""
        region, start = self._bounds(ref, what)
        if len(data) > ref.byte_size:
            raise BadRequestError(f"{what}: needs {len(data)} bytes but shared_memory_byte_size is {ref.byte_size}; ask for a window that holds it")
        try:
            # A write past the object's end would grow it: the client's object keeps its size.
            if os.fstat(region.descriptor).st_size < start + len(data):
                raise BadRequestError(f"{what}: region {ref.region!r} ends early: its object shrank after it was registered; register it again")
            written = os.pwrite(region.descriptor, data, start)
        except OSError as error:
            raise BadRequestError(f"{what}: cannot write region {ref.region!r}: {error.strerror}") from None
        if written != len(data):
            raise BadRequestError(f"{what}: wrote {written} of {len(data)} bytes into region {ref.region!r}; register it again")

    def close(self) -> None:
        self.unregister()

    def _is_reserved(self, status: os.stat_result) -> bool:
        """Whether an opened object is one of the server's own, under its name or any other (a
        hard link in /dev/shm would be another name for the same file)."""
        for reserved in self.reserved_names():
            try:
                own = os.stat(os.path.join(SHM_DIRECTORY, reserved.lstrip("/")))
            except OSError:
                continue
            if (own.st_dev, own.st_ino) == (status.st_dev, status.st_ino):
                return True
        return False

    def _bounds(self, ref: SharedMemoryRef, what: str) -> tuple[_Region, int]:
        region = self._regions.get(ref.region)
        if region is None:  # the request is at fault (400), not a missing resource of the path (404)
            raise BadRequestError(f"{what}: shared-memory region {ref.region!r} is not registered; register it first")
        if ref.offset + ref.byte_size > region.byte_size:
            raise BadRequestError(
                f"{what}: shared_memory_offset {ref.offset} + shared_memory_byte_size {ref.byte_size} runs past region {ref.region!r} ({region.byte_size} bytes)"
            )
        return region, region.offset + ref.offset
