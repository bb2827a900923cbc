"""Listening sockets for shoal's HTTP servers, taken before anything slow starts."""

from __future__ import annotations

import errno
import socket

from shoal.core.errors import InvalidInputError

__all__ = ["HTTP_BACKLOG", "bind_http_socket", "host_in_url"]

HTTP_BACKLOG = 2048
"""Connections the kernel queues before the server accepts them (uvicorn's default)."""


def bind_http_socket(host: str, port: int, *, port_option: str = "--http-port") -> socket.socket:
    """An HTTP server's listening socket on `host`:`port` (0: a port the system picks),
    listening now; a port in use or a `host` that is not this machine's is an InvalidInputError
    naming the option to change (`port_option`: the command's name for the port).

    It listens at once rather than when uvicorn starts: two sockets may bind one port while
    neither listens, and under uvloop a listen that then fails raised nothing, so the server
    printed its ready line for a port another process held."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise InvalidInputError(f"--host {host!r}: {error.strerror}; give an address or name of this machine (127.0.0.1, 0.0.0.0, ::)") from None
    # IPv4 first unless the host is an IPv6 address, as uvicorn chose: `localhost` resolves to
    # ::1 first on many systems, and clients of 127.0.0.1 would then find nothing.
    family, kind, protocol, _, address = min(addresses, key=lambda found: found[0] != (socket.AF_INET6 if ":" in host else socket.AF_INET))
    listening = socket.socket(family, kind, protocol)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart may reuse a port in TIME_WAIT
    try:
        listening.bind(address)
        listening.listen(HTTP_BACKLOG)
    except OSError as error:
        listening.close()
        if error.errno == errno.EACCES:
            raise InvalidInputError(f"{port_option} {port}: this user may not listen on ports below 1024 ({error.strerror}); choose one above 1023 (0 picks a free one)") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise InvalidInputError(f"--host {host!r}: not an address of this machine ({error.strerror}); give one of its addresses, or 0.0.0.0 for all") from None
        raise InvalidInputError(
            f"{port_option} {port}: cannot listen on {host}:{port}: {error.strerror}; stop what holds the port or choose another one (0 picks a free one)"
        ) from None
    return listening


def host_in_url(host: str) -> str:
    """`host` as a URL or a gRPC target writes it: an IPv6 address in brackets, "" (every
    interface) as 0.0.0.0."""
    return f"[{host}]" if ":" in host else host or "0.0.0.0"
