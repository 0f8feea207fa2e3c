"""Stage 3: the request, hop by hop, over a connection pinned to a checked address.

fetch() follows redirects itself, sending each hop through the earlier stages again (parse,
resolve and check); _get() makes one hop's request to the first checked address that accepts
a connection, under a watchdog that holds the whole fetch to its deadline.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.exceptions import HTTPError, NewConnectionError

from integrations.safe_http.addresses import resolve
from integrations.safe_http.errors import FetchError, map_error, timeout_error
from integrations.safe_http.response import Fetched, read_response
from integrations.safe_http.target import Target, parse


def fetch(
    url: str,
    *,
    max_bytes: int,
    allow_hosts: frozenset[str] = frozenset(),
    ca_file: str | None = None,
    timeout: float = 10.0,
    max_redirects: int = 3,
    accept: str = "image/png, image/jpeg, image/webp",
) -> Fetched:
    """GET an https URL and return its body, at most `max_bytes` long.

    `timeout` bounds the whole fetch, redirects included (each connect and read gets what is
    left of it), so a server that drips one byte at a time cannot hold a worker for long.
    A host named in `allow_hosts` (exact, case-insensitive) skips the address policy and only
    that: it is how tests reach a loopback server. Raises FetchError.
    """
    deadline = time.monotonic() + timeout
    allowed = frozenset(host.lower() for host in allow_hosts)
    current = url
    for _hop in range(max_redirects + 1):
        target = parse(current)
        addresses = resolve(target, allowed)
        location = _get(
            target,
            addresses,
            max_bytes=max_bytes,
            ca_file=ca_file,
            deadline=deadline,
            accept=accept,
        )
        if isinstance(location, Fetched):
            return location
        current = location
    raise FetchError("too_many_redirects", f"the URL redirected more than {max_redirects} times")


def _get(
    target: Target,
    addresses: list[str],
    *,
    max_bytes: int,
    ca_file: str | None,
    deadline: float,
    accept: str,
) -> Fetched | str:
    """One hop: the body, or the absolute URL a redirect points to."""
    for index, address in enumerate(addresses):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timeout_error(target.hostname)
        with _pinned_pool(target, address, ca_file=ca_file, remaining=remaining) as pool:
            last = index + 1 == len(addresses)
            response = _send(pool, target, accept=accept, deadline=deadline, last=last)
            if response is None:
                continue  # this address refused; try the next checked one
            return _read(target, response, max_bytes=max_bytes, deadline=deadline)
    raise AssertionError("unreachable: resolve never returns an empty list")


@contextlib.contextmanager
def _pinned_pool(
    target: Target, address: str, *, ca_file: str | None, remaining: float
) -> Iterator[urllib3.HTTPSConnectionPool]:
    """A one-connection pool to `address` that checks TLS for the target's name, watched."""
    connections: list[HTTPSConnection] = []
    pool = urllib3.HTTPSConnectionPool(
        host=address,
        port=target.port,
        server_hostname=target.hostname,
        assert_hostname=target.hostname,
        ca_certs=ca_file or _default_ca_file(),
        cert_reqs="CERT_REQUIRED",
        timeout=urllib3.Timeout(connect=remaining, read=remaining),
        retries=False,
        maxsize=1,
    )
    pool.ConnectionCls = _tracked_connection(connections)
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
    pool: urllib3.HTTPSConnectionPool,
    target: Target,
    *,
    accept: str,
    deadline: float,
    last: bool,
) -> urllib3.BaseHTTPResponse | None:
    """The response's headers, or None when the address refused and another one is left."""
    try:
        return pool.urlopen(
            "GET",
            target.request_path,
            headers={
                "Host": target.host_header,
                "Accept": accept,
                # The bytes are returned as sent, so ask for them uncompressed.
                "Accept-Encoding": "identity",
                "User-Agent": "sdsaas-fetch/1",
            },
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
            assert_same_host=False,
        )
    except NewConnectionError as exc:
        # Refused or unreachable before a byte was sent: another checked address of the same
        # name may work (an IPv6 answer on a host without IPv6 routes).
        if not last:
            return None
        raise FetchError(
            "connect_failed", f"could not connect to {target.hostname}", retryable=True
        ) from exc
    except HTTPError as exc:
        if time.monotonic() >= deadline:
            raise timeout_error(target.hostname) from exc
        raise map_error(target.hostname, exc) from exc


def _read(
    target: Target, response: urllib3.BaseHTTPResponse, *, max_bytes: int, deadline: float
) -> Fetched | str:
    """read_response, with a connection broken by the watchdog reported as the timeout."""
    try:
        return read_response(target, response, max_bytes=max_bytes, deadline=deadline)
    except FetchError as exc:
        if exc.code == "connect_failed" and time.monotonic() >= deadline:
            raise timeout_error(target.hostname) from exc
        raise
    finally:
        response.close()


def _tracked_connection(connections: list[HTTPSConnection]) -> type[HTTPSConnection]:
    """An HTTPS connection class that records its instances, for the deadline watchdog."""

    class Tracked(HTTPSConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            connections.append(self)

    return Tracked


def _shut(connections: list[HTTPSConnection]) -> None:
    # The TLS socket once connected (during the handshake each read is bounded by the socket
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
