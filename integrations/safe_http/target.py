"""Stage 1 of a hop: the URL, checked and taken apart into what the request needs."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from integrations.safe_http.errors import FetchError

_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str  # "https", or "http" for a host:port the caller lets through (Exemptions)
    hostname: str  # lower case, IDNA-encoded, no brackets around an IPv6 literal
    port: int
    request_path: str
    host_header: str

    @property
    def authority(self) -> str:
        """The "host:port" of an Exemptions.http_hosts entry: the port always written, and an
        IPv6 literal in brackets."""
        literal = ":" in self.hostname  # only an IPv6 literal has a colon once brackets are gone
        host = f"[{self.hostname}]" if literal else self.hostname
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Exemptions:
    """The caller's exceptions to "https, to public addresses only"; exact lower-case entries.

    `hosts` (fetch's allow_hosts): names whose addresses skip the address policy; https still.
    `http_hosts` (post's allow_http_hosts): "host:port" entries that may use plain http, and
    whose addresses skip the address policy, over http and https alike. Nothing else skips it.
    """

    hosts: frozenset[str] = frozenset()
    http_hosts: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, *, hosts: frozenset[str] = frozenset(), http_hosts: frozenset[str] = frozenset()
    ) -> Exemptions:
        return cls(
            hosts=frozenset(host.lower() for host in hosts),
            http_hosts=frozenset(entry.lower() for entry in http_hosts),
        )

    def skip_address_policy(self, target: Target) -> bool:
        return target.hostname in self.hosts or target.authority in self.http_hosts


def parse(url: str, exemptions: Exemptions) -> Target:
    """The URL's parts; FetchError, before any lookup, for a URL the caller may not reach."""
    http_hosts = exemptions.http_hosts
    if not url.isprintable() or " " in url:
        # Spaces, control characters (a NUL) and lone surrogates have no place in a URL we
        # send: refused here rather than escaped, so what is stored is what is requested.
        raise FetchError("invalid_url", "the URL must be printable, without spaces")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise FetchError("invalid_url", "the URL is not valid") from exc
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and http_hosts):
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
    default_port = _DEFAULT_PORTS[scheme]
    port = port or default_port
    literal = ":" in hostname  # only an IPv6 literal has a colon once brackets are gone
    host_in_header = f"[{hostname}]" if literal else hostname
    host_header = host_in_header if port == default_port else f"{host_in_header}:{port}"
    # Percent-encode only what cannot go on the request line, keeping existing escapes.
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    request_path = f"{path}?{query}" if query else path
    target = Target(
        url=url,
        scheme=scheme,
        hostname=hostname,
        port=port,
        request_path=request_path,
        host_header=host_header,
    )
    if scheme == "http" and target.authority not in http_hosts:
        raise FetchError("scheme_not_allowed", f"plain http is not allowed for {target.authority}")
    return target
