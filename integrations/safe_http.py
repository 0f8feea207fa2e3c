"""SSRF-safe HTTPS GET for URLs that tenants give us (img2img inputs, later webhook targets).

A tenant-supplied URL must never become a way to read our network: the instance metadata
service, the VPC, loopback services. So each hop is resolved once, every resolved address is
checked, and the connection goes to an address that was checked (the HTTP library gets an IP,
never the name, so a second DNS answer cannot swap in another address), while TLS still sends
SNI and verifies the certificate for the name in the URL. Redirects are followed here, hop by
hop, with the same checks.

Pure Python on urllib3: no Django, so the control worker and any other process can use it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.exceptions import HTTPError, NewConnectionError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

__all__ = ["FetchError", "Fetched", "address_is_public", "fetch"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024

# Listed here rather than trusting only ipaddress.is_global, whose tables differ between Python
# releases (3.11 calls multicast 224.0.0.0/4 global, for one). Both checks must pass.
_DENIED_V4 = tuple(
    IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT shared space
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, incl. the 169.254.169.254 metadata service
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. broadcast
    )
)
_DENIED_V6 = tuple(
    IPv6Network(net)
    for net in (
        "::/128",
        "::1/128",
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, incl. Teredo 2001::/32 (see below)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique-local, incl. the AWS metadata address fd00:ec2::254
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
# Local-use NAT64 (RFC 8215) translates into the operator's own network, and where the IPv4
# address sits depends on a prefix length we cannot know (/48../96), so it is refused outright.
_NAT64_LOCAL_USE = IPv6Network("64:ff9b:1::/48")
# Teredo is refused outright rather than decoded: it is obsolete, no image host needs it, and
# the packet goes through a relay and server named in the address itself.
_TEREDO = IPv6Network("2001::/32")


class FetchError(Exception):
    """A fetch that did not produce a body.

    `code` is a short machine code; `retryable` says whether trying again later can help
    (timeouts, connection failures, 5xx and 429). The message is safe to show the tenant: it
    names only hosts from the URLs it was given or redirected to, never a resolved address.
    """

    def __init__(
        self, code: str, message: str, *, retryable: bool = False, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status  # the HTTP status, for code "http_status"


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    content_type: str  # the Content-Type header as sent, "" when absent
    data: bytes


@dataclass(frozen=True)
class _Target:
    url: str
    hostname: str  # lower case, IDNA-encoded, no brackets around an IPv6 literal
    port: int
    request_path: str
    host_header: str


def address_is_public(ip: str | IPv4Address | IPv6Address) -> bool:
    """True only for a globally routable unicast address, looking through IPv6 forms that embed
    an IPv4 address (mapped, compatible, NAT64, 6to4) to the IPv4 address they reach."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, IPv4Address):
        return _ipv4_is_public(address)
    if address.scope_id is not None:
        address = IPv6Address(address.compressed.split("%", 1)[0])
    if address in _NAT64_LOCAL_USE or address in _TEREDO:
        return False
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        # The packet ends up at the IPv4 address, so that is what the policy must judge;
        # Python calls 64:ff9b::a9fe:a9fe and 2002:a9fe:a9fe::1 global.
        return _ipv4_is_public(embedded)
    if any(address in net for net in _DENIED_V6):
        return False
    return _flags_say_public(address) and not address.is_site_local


def _ipv4_is_public(address: IPv4Address) -> bool:
    if any(address in net for net in _DENIED_V4):
        return False
    return _flags_say_public(address)


def _flags_say_public(address: IPv4Address | IPv6Address) -> bool:
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_reserved
        or address.is_link_local
        or address.is_loopback
        or address.is_unspecified
    )


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _IPV4_COMPATIBLE or address in _NAT64_WELL_KNOWN:
        # Also catches :: and ::1, which become 0.0.0.0 and 0.0.0.1: refused either way.
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


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
        target = _parse(current)
        addresses = _resolve(target, allowed)
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


def _parse(url: str) -> _Target:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise FetchError("invalid_url", "the URL is not valid") from exc
    if parts.scheme.lower() != "https":
        raise FetchError("scheme_not_allowed", "only https URLs are allowed")
    if "@" in parts.netloc:
        # Userinfo is never needed to fetch a public image and is a classic parser-confusion
        # trick (https://allowed@evil/), so it is refused rather than stripped.
        raise FetchError("invalid_url", "URLs with a user name or password are not allowed")
    if not parts.hostname:
        raise FetchError("invalid_url", "the URL has no host")
    try:
        hostname = parts.hostname.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise FetchError("invalid_url", "the URL's host name is not valid") from exc
    port = port or 443
    literal = ":" in hostname  # only an IPv6 literal has a colon once brackets are gone
    host_in_header = f"[{hostname}]" if literal else hostname
    host_header = host_in_header if port == 443 else f"{host_in_header}:{port}"
    # Percent-encode only what cannot go on the request line, keeping existing escapes.
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    request_path = f"{path}?{query}" if query else path
    return _Target(
        url=url, hostname=hostname, port=port, request_path=request_path, host_header=host_header
    )


def _resolve(target: _Target, allowed: frozenset[str]) -> list[str]:
    """The host's addresses, each one checked; the caller connects only to these."""
    try:
        infos = socket.getaddrinfo(
            target.hostname, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        # EAI_AGAIN is the resolver saying "try again": a temporary failure, unlike a name that
        # does not exist.
        temporary = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
        raise FetchError(
            "dns_failed", f"could not resolve the host {target.hostname}", retryable=temporary
        ) from exc
    addresses: list[str] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchError("dns_failed", f"could not resolve the host {target.hostname}")
    if target.hostname in allowed:
        return addresses
    # Every address, not just the first: a name answering with [public, internal] would
    # otherwise reach the internal one whenever the public one is down or sorted second.
    if not all(address_is_public(address) for address in addresses):
        raise FetchError(
            "address_not_allowed",
            f"the host {target.hostname} resolves to an address that is not allowed",
        )
    return addresses


def _get(
    target: _Target,
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
            raise _timeout(target)
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
            try:
                response = pool.urlopen(
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
                # Refused or unreachable before a byte was sent: another checked address of
                # the same name may work (an IPv6 answer on a host without IPv6 routes).
                if index + 1 < len(addresses):
                    continue
                raise FetchError(
                    "connect_failed",
                    f"could not connect to {target.hostname}",
                    retryable=True,
                ) from exc
            except HTTPError as exc:
                if time.monotonic() >= deadline:
                    raise _timeout(target) from exc
                raise _map_error(target, exc) from exc
            try:
                return _read_response(target, response, max_bytes=max_bytes, deadline=deadline)
            except FetchError as exc:
                if exc.code == "connect_failed" and time.monotonic() >= deadline:
                    raise _timeout(target) from exc
                raise
            finally:
                response.close()
        finally:
            watchdog.cancel()
            pool.close()
    raise AssertionError("unreachable: _resolve never returns an empty list")


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


def _read_response(
    target: _Target,
    response: urllib3.BaseHTTPResponse,
    *,
    max_bytes: int,
    deadline: float,
) -> Fetched | str:
    status = response.status
    if status in REDIRECT_STATUSES:
        location = response.headers.get("Location")
        if not location:
            raise FetchError(
                "http_status",
                f"{target.hostname} sent a redirect without a Location",
                status=status,
            )
        return urljoin(target.url, location.strip())
    if not 200 <= status < 300:
        raise FetchError(
            "http_status",
            f"{target.hostname} answered HTTP {status}",
            retryable=status >= 500 or status == 429,
            status=status,
        )
    length = response.headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    received = 0
    try:
        while True:
            # read1 returns what has arrived instead of waiting for a full chunk, so the
            # deadline is checked while a slow server trickles.
            chunk = response.read1(CHUNK_BYTES, decode_content=False)
            if not chunk:
                break
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise _timeout(target)
    except HTTPError as exc:
        raise _map_error(target, exc) from exc
    except OSError as exc:
        raise FetchError(
            "connect_failed", f"the connection to {target.hostname} broke", retryable=True
        ) from exc
    return Fetched(
        url=target.url,
        content_type=response.headers.get("Content-Type", "").strip(),
        data=b"".join(chunks),
    )


def _map_error(target: _Target, exc: HTTPError) -> FetchError:
    # The library's own messages name the pinned IP address; the tenant sees only the host.
    if isinstance(exc, SSLError):
        return FetchError("tls_failed", f"the TLS connection to {target.hostname} failed")
    if isinstance(exc, NewConnectionError):
        return FetchError(
            "connect_failed", f"could not connect to {target.hostname}", retryable=True
        )
    if isinstance(exc, Urllib3TimeoutError):  # connect and read timeouts both
        return _timeout(target)
    return FetchError(
        "connect_failed", f"the connection to {target.hostname} failed", retryable=True
    )


def _timeout(target: _Target) -> FetchError:
    return FetchError("timeout", f"{target.hostname} did not answer in time", retryable=True)


def _too_large(max_bytes: int) -> FetchError:
    return FetchError("too_large", f"the response is larger than {max_bytes} bytes")


def _default_ca_file() -> str | None:
    """certifi's bundle when installed (the same roots on every image); else the system's."""
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())
