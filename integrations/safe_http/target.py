"""Stage 1 of a hop: the URL, checked and taken apart into what the request needs."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from integrations.safe_http.errors import FetchError


@dataclass(frozen=True)
class Target:
    url: str
    hostname: str  # lower case, IDNA-encoded, no brackets around an IPv6 literal
    port: int
    request_path: str
    host_header: str


def parse(url: str) -> Target:
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
    return Target(
        url=url, hostname=hostname, port=port, request_path=request_path, host_header=host_header
    )
