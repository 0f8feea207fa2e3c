"""integrations.safe_http.client: TLS for the name, redirects hop by hop, the overall deadline."""

from __future__ import annotations

import socket
import time

import pytest

from integrations.safe_http import FetchError, fetch
from tests.integrations.safe_http.support import CAP, PNG, FakeDns, LocalServer, fetch_local
from tests.support.https import Tls


@pytest.mark.parametrize(
    ("url_host", "allowed"), [("localhost", "localhost"), ("LocalHost", "LOCALHOST")]
)
def test_allowed_host_is_fetched(server: LocalServer, url_host: str, allowed: str) -> None:
    # given a host on the allow list (any case) and the test CA
    url = server.url("/png", host=url_host)
    # when it is fetched
    result = fetch(url, max_bytes=CAP, allow_hosts=frozenset({allowed}), ca_file=server.tls.ca_file)
    # then the body, its type and the URL come back, and the Host header named the host
    assert result.data == PNG
    assert result.content_type == "image/png"
    assert result.url == url
    assert server.httpd.hosts == [f"localhost:{server.port}"]


def test_allowed_host_still_needs_a_trusted_certificate(server: LocalServer) -> None:
    # given an allowed host whose certificate is from a CA we were not given
    # when it is fetched with the default roots
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/png", ca_file=None)
    # then TLS fails and nothing was requested
    assert caught.value.code == "tls_failed"
    assert not caught.value.retryable
    assert server.httpd.paths == []


def test_certificate_for_another_name_is_refused(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an allowed name that resolves to the server, whose certificate does not name it
    FakeDns({"wrong.test": [["127.0.0.1"]]}).install(monkeypatch)
    # when it is fetched with the right CA
    with pytest.raises(FetchError) as caught:
        fetch(
            server.url("/png", host="wrong.test"),
            max_bytes=CAP,
            allow_hosts=frozenset({"wrong.test"}),
            ca_file=server.tls.ca_file,
        )
    # then the hostname check fails
    assert caught.value.code == "tls_failed"
    assert server.httpd.paths == []


def test_redirect_on_the_same_host_is_followed(server: LocalServer) -> None:
    # given a relative redirect to another path on the allowed host
    # when it is fetched
    result = fetch_local(server, "/redirect-same")
    # then the target's body comes back under the final URL
    assert result.data == PNG
    assert result.url == server.url("/png")
    assert server.httpd.paths == ["/redirect-same", "/png"]


def test_redirect_to_the_metadata_address_is_refused(
    server: LocalServer, connects: list[str]
) -> None:
    # given a redirect to https://169.254.169.254/
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/redirect-metadata")
    # then the hop is refused before connecting anywhere but the first server
    assert caught.value.code == "address_not_allowed"
    assert connects == ["127.0.0.1"]
    assert server.httpd.paths == ["/redirect-metadata"]


def test_redirect_to_a_host_not_on_the_allow_list_is_refused(server: LocalServer) -> None:
    # given a redirect to the same server by IP literal, which is not on the allow list
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/redirect-ip")
    # then the second hop is refused: the allow list is per name, not per address
    assert caught.value.code == "address_not_allowed"
    assert server.httpd.paths == ["/redirect-ip"]


def test_redirect_to_http_is_refused(server: LocalServer) -> None:
    # given a redirect to plain http on the same host
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/redirect-http")
    # then the downgrade is refused
    assert caught.value.code == "scheme_not_allowed"
    assert server.httpd.paths == ["/redirect-http"]


def test_redirect_loop_stops_after_max_redirects(server: LocalServer) -> None:
    # given a path that redirects to itself
    # when it is fetched with at most 3 redirects
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/loop", max_redirects=3)
    # then the first request and 3 redirects were made, then it stopped
    assert caught.value.code == "too_many_redirects"
    assert not caught.value.retryable
    assert server.httpd.paths == ["/loop"] * 4


def test_headers_sent_a_byte_at_a_time_are_cut_off_by_the_overall_timeout(
    server: LocalServer,
) -> None:
    # given a server that sends its status line and headers one byte every 0.1 s
    started = time.monotonic()
    # when it is fetched with a 1 s timeout
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/slow-headers", timeout=1.0)
    # then the fetch ends near 1 s as a retryable timeout, not when the headers end
    assert caught.value.code == "timeout"
    assert caught.value.retryable
    assert time.monotonic() - started < 2.5


def test_server_that_never_answers_times_out(server: LocalServer) -> None:
    # given a server that accepts and then says nothing
    # when it is fetched with a short timeout
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/stall", timeout=0.5)
    # then it is a retryable timeout
    assert caught.value.code == "timeout"
    assert caught.value.retryable


def test_refused_connection_is_retryable(tls: Tls) -> None:
    # given a port where nothing listens
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch(
            f"https://localhost:{port}/png",
            max_bytes=CAP,
            allow_hosts=frozenset({"localhost"}),
            ca_file=tls.ca_file,
        )
    # then it is a retryable connection failure naming no address
    assert caught.value.code == "connect_failed"
    assert caught.value.retryable
    assert "127.0.0.1" not in str(caught.value)
