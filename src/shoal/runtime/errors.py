"""Errors the serving runtime answers with, each carrying its HTTP status and gRPC code.

Frontends map these and nothing else; any other exception is a bug and becomes a 500 /
INTERNAL with a generic message (the detail goes to the log, not to the client).
"""

from __future__ import annotations

__all__ = [
    "ServingError",
    "BadRequestError",
    "NotFoundError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "OverloadedError",
    "DeadlineExceededError",
    "PayloadTooLargeError",
    "WorkerFailedError",
    "UnauthorizedError",
    "RequirementsUnmetError",
    "ModelLoadError",
    "ForbiddenError",
]


class ServingError(Exception):
    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequestError(ServingError):
    """Malformed body, wrong shape or datatype, unknown parameter value."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class UnauthorizedError(ServingError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class ForbiddenError(ServingError):
    """A call this client may not make, whatever its token (a shared-memory registration from another host)."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class NotFoundError(ServingError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelNotFoundError(NotFoundError):
    pass


class PayloadTooLargeError(ServingError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnsupportedEncodingError(ServingError):
    """A request body in a Content-Encoding the server does not read."""

    http_status = 415
    grpc_code = "INVALID_ARGUMENT"


class ModelNotReadyError(ServingError):
    """The model exists but is not loaded (or is still warming up)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class OverloadedError(ServingError):
    """The queue for this model is full; the client should retry after `retry_after_s`."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_whole_s(self) -> int:
        """What a Retry-After header can say (whole seconds), never 0: "retry at once" would
        bring the load straight back."""
        return max(1, round(self.retry_after_s))


class DeadlineExceededError(ServingError):
    """Dropped: the deadline cannot be met (answered explicitly, never silently)."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class WorkerFailedError(ServingError):
    """The worker process holding the request died; it is being restarted."""

    http_status = 500
    grpc_code = "INTERNAL"


class RequirementsUnmetError(ServingError):
    """No variant can meet the query's requirements even on an idle replica.

    `alternatives` lists, per requirement, the least relaxation that would make the query
    answerable and the variant it would get: the client decides, shoal never downgrades silently.
    """

    http_status = 422
    grpc_code = "FAILED_PRECONDITION"

    def __init__(self, message: str, alternatives: list[dict]):
        super().__init__(message)
        self.alternatives = alternatives


class ModelLoadError(ServingError):
    """A worker could not load a variant (unreadable or corrupt file, out of memory): the variant
    is unavailable, the server and its other variants are not."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
