"""Stage 2 of a hop: the host's addresses, resolved once and every one checked.

The address policy (address_is_public) says which addresses a tenant's URL may reach; the
caller then connects only to the addresses returned here, so a second DNS answer cannot swap
in another one (DNS rebinding).

A lookup is bounded by the caller's deadline (a send's or a fetch's), else by
LOOKUP_TIMEOUT_S (a URL checked while an API request waits): the system resolver's own
timeouts and retries can add up to tens of seconds. A lookup given up on finishes on its thread.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from integrations.safe_http.errors import FetchError
from integrations.safe_http.target import Exemptions, Target

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


LOOKUP_TIMEOUT_S = 5.0


@functools.cache
def _lookups(pid: int) -> ThreadPoolExecutor:
    """This process's lookup threads (one pool per process: none is inherited across a fork)."""
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"dns-{pid}")


def resolve(target: Target, exemptions: Exemptions, *, deadline: float | None = None) -> list[str]:
    """The host's addresses, each one checked unless the caller exempts the target; the caller
    connects only to these. The lookup ends by `deadline` (time.monotonic()), else within
    LOOKUP_TIMEOUT_S: a resolver that has not answered by then is a retryable DNS failure."""
    wait_s = LOOKUP_TIMEOUT_S if deadline is None else max(0.0, deadline - time.monotonic())
    lookup = _lookups(os.getpid()).submit(
        socket.getaddrinfo,
        target.hostname,
        target.port,
        type=socket.SOCK_STREAM,
        proto=socket.IPPROTO_TCP,
    )
    try:
        infos = lookup.result(timeout=wait_s)
    except TimeoutError as exc:
        raise FetchError(
            "dns_failed",
            f"the host {target.hostname} was not resolved within {wait_s:.1f} s",
            retryable=True,
        ) from exc
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
    if exemptions.skip_address_policy(target):
        return addresses
    # Every address, not just the first: a name answering with [public, internal] would
    # otherwise reach the internal one whenever the public one is down or sorted second.
    if not all(address_is_public(address) for address in addresses):
        raise FetchError(
            "address_not_allowed",
            f"the host {target.hostname} resolves to an address that is not allowed",
        )
    return addresses
