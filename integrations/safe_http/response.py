"""Stage 4 of a hop: the server's answer read into a body, or the redirect it points to (GET);
or, for a POST, whatever it answered, with an excerpt of its body."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
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


@dataclass(frozen=True)
class Sent:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # at most max_response_bytes; the rest is not read
    latency_s: float  # from the call to the end of the read, DNS and connect included


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


def read_sent(
    target: Target,
    response: urllib3.BaseHTTPResponse,
    *,
    max_bytes: int,
    started: float,
    deadline: float,
) -> Sent:
    """Any status, with at most `max_bytes` of the body: the rest is left unread. The body is an
    excerpt for the log, so a body that breaks off or outlasts the deadline is cut there rather
    than turning an answer into an error."""
    chunks: list[bytes] = []
    with contextlib.suppress(FetchError):
        for chunk in _body_chunks(target, response, limit=max_bytes, deadline=deadline):
            chunks.append(chunk)
    return Sent(
        status=response.status,
        # HTTPHeaderDict joins a repeated header's values with ", " under its first spelling.
        headers={name.lower(): response.headers[name] for name in response.headers},
        body=b"".join(chunks),
        latency_s=time.monotonic() - started,
    )


def _read_body(
    target: Target, response: urllib3.BaseHTTPResponse, *, max_bytes: int, deadline: float
) -> bytes:
    # One byte past the cap tells "too large" from "exactly the cap" without reading on.
    data = b"".join(_body_chunks(target, response, limit=max_bytes + 1, deadline=deadline))
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def _body_chunks(
    target: Target, response: urllib3.BaseHTTPResponse, *, limit: int, deadline: float
) -> Iterator[bytes]:
    """The body as it arrives, up to `limit` bytes, then stops; FetchError at the deadline."""
    received = 0
    try:
        while received < limit:
            # read1 returns what has arrived instead of waiting for a full chunk, so the
            # deadline is checked while a slow server trickles.
            chunk = response.read1(min(CHUNK_BYTES, limit - received), decode_content=False)
            if not chunk:
                return
            received += len(chunk)
            yield chunk
            if time.monotonic() > deadline:
                raise timeout_error(target.hostname)
    except HTTPError as exc:
        raise map_error(target.hostname, exc) from exc
    except OSError as exc:
        raise FetchError(
            "connect_failed", f"the connection to {target.hostname} broke", retryable=True
        ) from exc


def _too_large(max_bytes: int) -> FetchError:
    return FetchError("too_large", f"the response is larger than {max_bytes} bytes")
