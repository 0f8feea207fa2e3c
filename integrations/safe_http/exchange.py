"""Stage 3 of a hop: one request over a connection pinned to a checked address, and its answer.

exchange() sends the request to the first checked address that accepts a connection (never
resending once a byte has gone out) and hands the answer to the caller's reader, all under a
watchdog that holds the call to its deadline.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError

from integrations.safe_http.errors import FetchError, map_error, timeout_error
from integrations.safe_http.target import Target

T = TypeVar("T")
C = TypeVar("C", bound=HTTPConnection)
Reader = Callable[[urllib3.BaseHTTPResponse], T]


# Sent as the target and the body say, whatever the caller's headers hold.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


@dataclass(frozen=True)
class Request:
    method: str
    headers: Mapping[str, str]  # Host, Content-Length and Transfer-Encoding are set here
    body: bytes | None = None


def exchange(
    target: Target,
    addresses: list[str],
    request: Request,
    *,
    read: Reader[T],
    ca_file: str | None,
    deadline: float,
    connect_timeout: float | None = None,
) -> T:
    """`read` of the answer to `request`, sent to the first of `addresses` that connects.

    Each connect (TCP, and TLS for https) gets `connect_timeout` at most, and never more than
    what is left before `deadline`, which also bounds sending and reading. Raises FetchError
    when no answer came.
    """
    for index, address in enumerate(addresses):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timeout_error(target.hostname)
        connect = remaining if connect_timeout is None else min(connect_timeout, remaining)
        with _pinned_pool(
            target, address, ca_file=ca_file, connect=connect, remaining=remaining
        ) as pool:
            last = index + 1 == len(addresses)
            response = _send(pool, target, request, deadline=deadline, last=last)
            if response is None:
                continue  # this address did not connect; try the next checked one
            return _read(target, response, read, deadline=deadline)
    raise AssertionError("unreachable: resolve never returns an empty list")


@contextlib.contextmanager
def _pinned_pool(
    target: Target, address: str, *, ca_file: str | None, connect: float, remaining: float
) -> Iterator[urllib3.HTTPConnectionPool]:
    """A one-connection pool to `address` (checking TLS for the target's name), watched."""
    connections: list[HTTPConnection] = []
    timeouts = urllib3.Timeout(connect=connect, read=remaining)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            host=address,
            port=target.port,
            server_hostname=target.hostname,
            assert_hostname=target.hostname,
            ca_certs=ca_file or _default_ca_file(),
            cert_reqs="CERT_REQUIRED",
            timeout=timeouts,
            retries=False,
            maxsize=1,
        )
        pool.ConnectionCls = _tracked(HTTPSConnection, connections)
    else:  # plain http, only ever to a host:port the caller exempted (target.parse)
        pool = urllib3.HTTPConnectionPool(
            host=address, port=target.port, timeout=timeouts, retries=False, maxsize=1
        )
        pool.ConnectionCls = _tracked(HTTPConnection, connections)
    # urllib3's read timeout bounds each recv, not the whole response: a server sending its
    # headers a byte at a time would hold us for ever. At the deadline the socket is shut.
    watchdog = threading.Timer(remaining, _shut, args=(connections,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield pool
    finally:
        watchdog.cancel()
        pool.close()


def _send(
    pool: urllib3.HTTPConnectionPool,
    target: Target,
    request: Request,
    *,
    deadline: float,
    last: bool,
) -> urllib3.BaseHTTPResponse | None:
    """The response's headers, or None when the address did not connect and another is left."""
    try:
        return pool.urlopen(
            request.method,
            target.request_path,
            body=request.body,
            headers=_headers(target, request),
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
            assert_same_host=False,
        )
    except ConnectTimeoutError as exc:
        # Refused, unreachable or silent before a byte was sent (NewConnectionError is one of
        # these too): another checked address of the same name may work (an IPv6 answer on a
        # host without IPv6 routes), and nothing can have been sent twice.
        if not last:
            return None
        raise map_error(target.hostname, exc) from exc
    except HTTPError as exc:
        if time.monotonic() >= deadline:
            raise timeout_error(target.hostname) from exc
        raise map_error(target.hostname, exc) from exc


def _headers(target: Target, request: Request) -> dict[str, str]:
    """The request's headers, with Host for the target and the body's framing left to urllib3
    (Content-Length from the body)."""
    headers = {"Host": target.host_header}
    for name, value in request.headers.items():
        if name.lower() not in _OWN_HEADERS:
            headers[name] = value
    return headers


def _read(
    target: Target, response: urllib3.BaseHTTPResponse, read: Reader[T], *, deadline: float
) -> T:
    """`read`, with a connection broken by the watchdog reported as the timeout."""
    try:
        return read(response)
    except FetchError as exc:
        if exc.code == "connect_failed" and time.monotonic() >= deadline:
            raise timeout_error(target.hostname) from exc
        raise
    finally:
        response.close()


def _tracked(base: type[C], connections: list[HTTPConnection]) -> type[C]:
    """A subclass of `base` that records its instances, for the deadline watchdog."""

    class Tracked(base):  # type: ignore[valid-type,misc]  # a class made at run time
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            connections.append(self)

    return Tracked


def _shut(connections: list[HTTPConnection]) -> None:
    # The socket once connected (during a TLS handshake each read is bounded by the connect
    # timeout alone; the watchdog is for a server that answers, but slowly).
    for connection in connections:
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _default_ca_file() -> str | None:
    """certifi's bundle when installed (the same roots on every image); else the system's."""
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())
