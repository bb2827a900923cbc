"""One exception hierarchy for the whole package.

    ShoalError                 base; every message is one full sentence that names the fix
    ├── InvalidInputError      a file, flag or request field is wrong (CLI exit 2, HTTP 4xx)
    │   └── RepositoryError    the model repository refuses an operation (path, duplicate, ONNX)
    ├── DeviceUnavailableError a device named by the user is not present on this machine
    └── ProcessFailedError     a process shoal started (a server) failed while a command needed it

Expected outcomes of planning (infeasible, no capacity) are results with a status, not
exceptions; these classes are for misuse and for environments that cannot do what was asked.
"""

from __future__ import annotations

__all__ = ["ShoalError", "InvalidInputError", "RepositoryError", "DeviceUnavailableError", "ProcessFailedError"]


class ShoalError(Exception):
    """Base class of every error shoal raises on purpose."""


class InvalidInputError(ShoalError, ValueError):
    """A file, command-line flag or request field is wrong; the message names it."""


class RepositoryError(InvalidInputError):
    """The model repository refuses an operation (unsafe name, duplicate, bad ONNX file)."""


class DeviceUnavailableError(ShoalError):
    """A device named by the user is not present, or ONNX Runtime has no provider for it."""


class ProcessFailedError(ShoalError, RuntimeError):
    """A process shoal started for the command (a `shoal serve`) failed to start or died while it
    was needed: not the user's input (CLI exit 1); the message says where its log is."""
