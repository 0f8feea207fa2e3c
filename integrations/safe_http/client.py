"""The calls: fetch (GET, following redirects hop by hop), post (one POST, never following) and
check_url (the first two stages alone, to vet a URL before it is stored).

Each hop goes through the stages in order: target.parse, addresses.resolve, then
exchange.exchange with a reader from response.py. Nothing here connects by itself.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

from integrations.safe_http.addresses import resolve
from integrations.safe_http.errors import FetchError
from integrations.safe_http.exchange import Request, exchange
from integrations.safe_http.response import Fetched, Sent, read_response, read_sent
from integrations.safe_http.target import Exemptions, parse


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
    that: it is how tests reach a loopback server. Raises FetchError, for a status other than
    2xx (after redirects) too.
    """
    deadline = time.monotonic() + timeout
    exemptions = Exemptions.of(hosts=allow_hosts)
    request = Request(
        "GET",
        {
            "Accept": accept,
            # The bytes are returned as sent, so ask for them uncompressed.
            "Accept-Encoding": "identity",
            "User-Agent": "sdsaas-fetch/1",
        },
    )
    current = url
    for _hop in range(max_redirects + 1):
        target = parse(current, exemptions)
        addresses = resolve(target, exemptions, deadline=deadline)
        read = functools.partial(read_response, target, max_bytes=max_bytes, deadline=deadline)
        result = exchange(target, addresses, request, read=read, ca_file=ca_file, deadline=deadline)
        if isinstance(result, Fetched):
            return result
        current = result  # the absolute URL a redirect points to
    raise FetchError("too_many_redirects", f"the URL redirected more than {max_redirects} times")


def post(
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    max_response_bytes: int = 4096,
    allow_http_hosts: frozenset[str] = frozenset(),
    ca_file: str | None = None,
    connect_timeout: float = 3.0,
    timeout: float = 15.0,
) -> Sent:
    """POST `body` once and return whatever the server answered: any status, 3xx included
    (a redirect is never followed), with at most `max_response_bytes` of its body.

    `allow_http_hosts` holds "host:port" entries (lower-case host, IPv6 literals in brackets)
    that may be reached over plain http (port 80 by default), and whose addresses skip the
    address policy over http and https alike: how tests and local development reach a loopback
    receiver. `connect_timeout` bounds the TCP and TLS connect; `timeout` the whole call. The
    caller's headers are sent as given, except Host, Content-Length and Transfer-Encoding, which
    come from the URL and the body. Raises FetchError only when no HTTP answer came: a URL or
    address refused (not retryable), DNS, connect, TLS or timeout (retryable as for fetch).
    """
    started = time.monotonic()
    deadline = started + timeout
    exemptions = Exemptions.of(http_hosts=allow_http_hosts)
    target = parse(url, exemptions)
    addresses = resolve(target, exemptions, deadline=deadline)
    request = Request("POST", _with_defaults(headers), body)
    read = functools.partial(
        read_sent, target, max_bytes=max_response_bytes, started=started, deadline=deadline
    )
    return exchange(
        target,
        addresses,
        request,
        read=read,
        ca_file=ca_file,
        deadline=deadline,
        connect_timeout=connect_timeout,
    )


def check_url(url: str, *, allow_http_hosts: frozenset[str] = frozenset()) -> None:
    """Raise FetchError unless post() would try `url` now: its scheme is allowed and every
    address its host resolves to passes the address policy (or it is exempted). Connects to
    nothing. post() checks again on every call, since DNS answers change."""
    exemptions = Exemptions.of(http_hosts=allow_http_hosts)
    resolve(parse(url, exemptions), exemptions)


def _with_defaults(headers: Mapping[str, str]) -> dict[str, str]:
    # The excerpt is logged as received, so ask for it uncompressed unless the caller says.
    given = {name.lower() for name in headers}
    defaults = {"Accept-Encoding": "identity", "User-Agent": "sdsaas-webhooks/1"}
    missing = {name: value for name, value in defaults.items() if name.lower() not in given}
    return {**missing, **headers}
