"""integrations.safe_http.post: the request as sent, any answer returned, never a redirect
followed, the body excerpt capped, the connect timeout and the overall deadline."""

from __future__ import annotations

import socket
import time

import pytest

from integrations.safe_http import FetchError, post
from tests.integrations.safe_http.receiver import (
    BODY,
    LONG_BODY,
    STALLED_PART,
    ReceiverServer,
    post_to,
    silent_listener,
    syn_dropping_port,
)
from tests.support.https import Tls


def test_body_and_headers_arrive_as_sent(receiver: ReceiverServer) -> None:
    # given webhook headers
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": "1674087231",
        "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    }
    # when the body is posted
    sent = post_to(receiver, "/hook", headers=headers)
    # then one POST arrived with the body and headers as sent, Host naming the URL's host
    [received] = receiver.received
    assert (received.method, received.path, received.body) == ("POST", "/hook", BODY)
    for name, value in headers.items():
        assert received.headers[name.lower()] == value
    assert received.headers["host"] == f"localhost:{receiver.port}"
    assert received.headers["content-length"] == str(len(BODY))
    # and the answer came back with lower-case header names and a latency
    assert sent.status == 200
    assert sent.body == b"ok"
    assert sent.headers["content-type"] == "text/plain"
    assert 0 < sent.latency_s < 5


def test_host_and_framing_come_from_the_url_and_the_body(receiver: ReceiverServer) -> None:
    # given caller headers that contradict the URL and the body
    headers = {"HOST": "internal.example", "content-length": "999", "User-Agent": "hooks/2"}
    # when it is posted
    post_to(receiver, "/hook", headers=headers)
    # then Host and Content-Length are the true ones; other headers are the caller's
    [received] = receiver.received
    assert received.headers["host"] == f"localhost:{receiver.port}"
    assert received.headers["content-length"] == str(len(BODY))
    assert received.headers["user-agent"] == "hooks/2"
    assert received.body == BODY


@pytest.mark.parametrize("status", [200, 204, 410, 429, 503])
def test_every_status_is_an_answer(receiver: ReceiverServer, status: int) -> None:
    # given a receiver answering `status`
    # when it is posted to
    sent = post_to(receiver, f"/status/{status}")
    # then the status comes back as a Sent, not an error, with the body when there is one
    assert sent.status == status
    assert sent.body == {204: b"", 429: b"slow down"}.get(status, f"status {status}".encode())
    assert len(receiver.received) == 1


def test_retry_after_comes_back_in_the_headers(receiver: ReceiverServer) -> None:
    # given a receiver answering 429 with Retry-After
    # when it is posted to
    sent = post_to(receiver, "/status/429")
    # then the header is there for the caller's schedule
    assert sent.status == 429
    assert sent.headers["retry-after"] == "120"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_returned_and_never_followed(
    receiver: ReceiverServer, plain_receiver: ReceiverServer, status: int
) -> None:
    # given a receiver redirecting to another server (which the test would let through)
    receiver.location = plain_receiver.url("/hook")
    # when it is posted to
    sent = post_to(
        receiver,
        f"/status/{status}",
        allow_http_hosts=frozenset({receiver.authority, plain_receiver.authority}),
    )
    # then the redirect is the answer, and the target received nothing at all
    assert sent.status == status
    assert sent.headers["location"] == plain_receiver.url("/hook")
    assert [r.path for r in receiver.received] == [f"/status/{status}"]
    assert plain_receiver.accepted == 0
    assert plain_receiver.received == []


def test_plain_http_to_an_allowed_host_port(plain_receiver: ReceiverServer) -> None:
    # given a plain-http receiver whose host:port is allowed
    # when it is posted to over http
    sent = post_to(plain_receiver, "/hook")
    # then it arrives
    assert sent.status == 200
    assert [r.body for r in plain_receiver.received] == [BODY]


# --- the body excerpt ---------------------------------------------------------------------


def test_long_body_is_cut_at_the_cap_without_reading_on(receiver: ReceiverServer) -> None:
    # given a body far over the cap, most of which never comes
    started = time.monotonic()
    # when it is posted to with a 100-byte cap
    sent = post_to(receiver, "/long", max_response_bytes=100)
    # then the first 100 bytes come back at once, not an error, not a wait for the rest
    assert sent.status == 200
    assert sent.body == b"x" * 100
    assert time.monotonic() - started < 2.0


def test_default_cap_is_4096_bytes(receiver: ReceiverServer) -> None:
    # given a body longer than 4096 bytes
    assert LONG_BODY > 4096
    # when it is posted to with the default cap
    sent = post_to(receiver, "/long")
    # then 4096 bytes come back
    assert sent.body == b"x" * 4096


def test_body_that_stalls_is_cut_at_the_deadline(receiver: ReceiverServer) -> None:
    # given a 200 whose body stops after 10 of 100 bytes
    # when it is posted to with a 1 s timeout
    sent = post_to(receiver, "/stall-body", timeout=1.0)
    # then the answer is still the 200, with what came, near the deadline
    assert sent.status == 200
    assert sent.body == STALLED_PART
    assert 0.9 <= sent.latency_s < 2.5


# --- no answer ----------------------------------------------------------------------------


def test_server_that_never_answers_times_out_at_the_overall_timeout(
    receiver: ReceiverServer,
) -> None:
    # given a receiver that reads the request and never answers
    started = time.monotonic()
    # when it is posted to with a 1 s timeout (connect allowed 3 s)
    with pytest.raises(FetchError) as caught:
        post_to(receiver, "/stall", connect_timeout=3.0, timeout=1.0)
    # then it is a retryable timeout near 1 s, and the request did arrive (once)
    assert caught.value.code == "timeout"
    assert caught.value.retryable
    assert time.monotonic() - started < 2.5
    assert [r.path for r in receiver.received] == ["/stall"]


def test_connect_timeout_bounds_a_connect_that_hangs(tls: Tls) -> None:
    # given a port whose listener drops SYNs (its accept queue is full)
    with syn_dropping_port() as port:
        if port is None:
            pytest.skip("this system does not drop SYNs on a full accept queue")
        started = time.monotonic()
        # when it is posted to with a 0.5 s connect timeout of a 10 s timeout
        with pytest.raises(FetchError) as caught:
            _post_to_port(port, tls, connect_timeout=0.5, timeout=10.0)
    # then it is a retryable timeout after the connect timeout, not the overall one
    assert caught.value.code == "timeout"
    assert caught.value.retryable
    assert time.monotonic() - started < 3.0


def test_connect_timeout_bounds_a_tls_handshake_never_answered(tls: Tls) -> None:
    # given a listener whose kernel completes TCP but which never speaks TLS
    with silent_listener() as port:
        started = time.monotonic()
        # when it is posted to with a 0.5 s connect timeout of a 10 s timeout
        with pytest.raises(FetchError) as caught:
            _post_to_port(port, tls, connect_timeout=0.5, timeout=10.0)
    # then it is a retryable timeout after the connect timeout
    assert caught.value.code == "timeout"
    assert caught.value.retryable
    assert time.monotonic() - started < 3.0


def test_overall_timeout_bounds_the_connect_too(tls: Tls) -> None:
    # given a listener that never speaks TLS
    with silent_listener() as port:
        started = time.monotonic()
        # when it is posted to with a timeout shorter than the connect timeout
        with pytest.raises(FetchError) as caught:
            _post_to_port(port, tls, connect_timeout=10.0, timeout=0.5)
    # then the overall timeout ends it
    assert caught.value.code == "timeout"
    assert time.monotonic() - started < 3.0


def test_refused_connection_is_retryable(tls: Tls) -> None:
    # given a port where nothing listens
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # when it is posted to
    with pytest.raises(FetchError) as caught:
        _post_to_port(port, tls)
    # then it is a retryable connection failure naming no address
    assert caught.value.code == "connect_failed"
    assert caught.value.retryable
    assert "127.0.0.1" not in str(caught.value)


def test_untrusted_certificate_is_a_tls_failure(receiver: ReceiverServer) -> None:
    # given a receiver whose certificate is from a CA we were not given
    # when it is posted to with the default roots
    with pytest.raises(FetchError) as caught:
        post_to(receiver, "/hook", ca_file=None)
    # then TLS fails (not retryable) and nothing was requested
    assert caught.value.code == "tls_failed"
    assert not caught.value.retryable
    assert receiver.received == []


def _post_to_port(port: int, tls: Tls, **options: float) -> None:
    post(
        f"https://localhost:{port}/hook",
        body=BODY,
        headers={},
        allow_http_hosts=frozenset({f"localhost:{port}"}),
        ca_file=tls.ca_file,
        **options,
    )
