"""integrations.safe_http.response: the status, the size cap and the deadline while reading."""

from __future__ import annotations

import time

import pytest

from integrations.safe_http import FetchError
from tests.integrations.safe_http.support import CAP, LocalServer, fetch_local


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (404, False), (403, False), (304, False)],
)
def test_error_status(server: LocalServer, status: int, retryable: bool) -> None:
    # given a server answering an error status
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch_local(server, f"/status/{status}")
    # then the status is reported, retryable only for 5xx and 429
    assert caught.value.code == "http_status"
    assert caught.value.status == status
    assert caught.value.retryable is retryable


def test_body_of_exactly_the_cap_is_fetched(server: LocalServer) -> None:
    # given a body of exactly max_bytes
    # when it is fetched
    result = fetch_local(server, "/exact")
    # then it all comes back
    assert len(result.data) == CAP


@pytest.mark.parametrize("path", ["/big-length", "/big-chunked", "/big-close"])
def test_body_over_the_cap_is_refused_without_reading_on(server: LocalServer, path: str) -> None:
    # given a body over the cap: announced by Content-Length (and never sent), or chunked or
    # close-delimited and never ended
    started = time.monotonic()
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch_local(server, path, timeout=3.0)
    # then it stops at the cap rather than waiting for the rest (which would be a timeout)
    assert caught.value.code == "too_large"
    assert not caught.value.retryable
    assert time.monotonic() - started < 2.0


def test_slow_drip_is_cut_off_by_the_overall_timeout(server: LocalServer) -> None:
    # given a server sending one byte every 0.1 s, each within the socket timeout
    started = time.monotonic()
    # when it is fetched with a 1 s timeout
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/drip", timeout=1.0)
    # then the whole fetch ends near 1 s as a retryable timeout
    assert caught.value.code == "timeout"
    assert caught.value.retryable
    assert time.monotonic() - started < 2.5
