"""Stage 4 of a hop: the server's answer read into a body, or the redirect it points to."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urljoin

import urllib3
from urllib3.exceptions import HTTPError

from integrations.safe_http.errors import FetchError, map_error, timeout_error
from integrations.safe_http.target import Target

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    content_type: str  # the Content-Type header as sent, "" when absent
    data: bytes


def read_response(
    target: Target,
    response: urllib3.BaseHTTPResponse,
    *,
    max_bytes: int,
    deadline: float,
) -> Fetched | str:
    """The body, or the absolute URL a redirect points to."""
    status = response.status
    if status in REDIRECT_STATUSES:
        return _redirect_location(target, response)
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
    data = _read_body(target, response, max_bytes=max_bytes, deadline=deadline)
    return Fetched(
        url=target.url,
        content_type=response.headers.get("Content-Type", "").strip(),
        data=data,
    )


def _redirect_location(target: Target, response: urllib3.BaseHTTPResponse) -> str:
    location = response.headers.get("Location")
    if not location:
        raise FetchError(
            "http_status",
            f"{target.hostname} sent a redirect without a Location",
            status=response.status,
        )
    return urljoin(target.url, location.strip())


def _read_body(
    target: Target, response: urllib3.BaseHTTPResponse, *, max_bytes: int, deadline: float
) -> bytes:
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
                raise timeout_error(target.hostname)
    except HTTPError as exc:
        raise map_error(target.hostname, exc) from exc
    except OSError as exc:
        raise FetchError(
            "connect_failed", f"the connection to {target.hostname} broke", retryable=True
        ) from exc
    return b"".join(chunks)


def _too_large(max_bytes: int) -> FetchError:
    return FetchError("too_large", f"the response is larger than {max_bytes} bytes")
