"""integrations.safe_http.post and check_url: which URLs and addresses a webhook may reach, when
that is checked, and what allow_http_hosts lets through."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from integrations.safe_http import FetchError, addresses, check_url, post
from tests.integrations.safe_http.receiver import BODY, ReceiverServer, post_to
from tests.integrations.safe_http.support import FakeDns
from tests.support.https import PINNED_NAME

# --- plain http ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "allowed",
    [
        set(),
        {"localhost"},  # a host name alone is no host:port entry
        {"localhost:1"},  # another port
        {"127.0.0.1:{port}"},  # another name for the same address
    ],
)
def test_plain_http_not_allowed_is_refused_before_dns_or_connect(
    plain_receiver: ReceiverServer,
    monkeypatch: pytest.MonkeyPatch,
    connects: list[str],
    allowed: set[str],
) -> None:
    # given a plain-http URL whose host:port is not in allow_http_hosts
    dns = FakeDns({})
    dns.install(monkeypatch)
    http_hosts = frozenset(entry.format(port=plain_receiver.port) for entry in allowed)
    # when it is posted to, or checked
    for call in (post_to, _check):
        with pytest.raises(FetchError) as caught:
            call(plain_receiver, "/hook", allow_http_hosts=http_hosts)
        # then it is refused, not retryable, with no lookup and no connection
        assert caught.value.code == "scheme_not_allowed"
        assert not caught.value.retryable
    assert dns.lookups == []
    assert connects == []
    assert plain_receiver.accepted == 0


@pytest.mark.parametrize("url", ["ftp://localhost/hook", "file:///etc/passwd"])
def test_other_schemes_are_refused(url: str) -> None:
    # given a URL neither https nor http, even with every exemption
    # when it is checked / then it is refused
    with pytest.raises(FetchError) as caught:
        check_url(url, allow_http_hosts=frozenset({"localhost:80", "localhost:21"}))
    assert caught.value.code == "scheme_not_allowed"


def test_plain_http_port_defaults_to_80(monkeypatch: pytest.MonkeyPatch) -> None:
    # given an http URL without a port
    FakeDns({"hooks.test": [["127.0.0.1"]]}).install(monkeypatch)
    url = "http://Hooks.Test/hook"
    # when it is checked against entries for port 80 and for another port
    check_url(url, allow_http_hosts=frozenset({"hooks.test:80"}))
    with pytest.raises(FetchError) as caught:
        check_url(url, allow_http_hosts=frozenset({"hooks.test:8080"}))
    # then only the port-80 entry lets it through
    assert caught.value.code == "scheme_not_allowed"


def test_ipv6_literal_entries_are_bracketed() -> None:
    # given an http URL to an IPv6 loopback literal
    url = "http://[::1]:8080/hook"
    # when it is checked with the bracketed host:port entry
    check_url(url, allow_http_hosts=frozenset({"[::1]:8080"}))
    # then it passes (exempt from the address policy); without it, it does not
    with pytest.raises(FetchError) as caught:
        check_url(url)
    assert caught.value.code == "scheme_not_allowed"


# --- the address policy -------------------------------------------------------------------


def test_https_to_loopback_is_refused_unless_its_host_port_is_allowed(
    receiver: ReceiverServer, connects: list[str]
) -> None:
    # given an https receiver on loopback
    # when it is posted to with no entry, and with an entry for another port of the same host
    for http_hosts in (frozenset(), frozenset({"localhost:1"})):
        with pytest.raises(FetchError) as caught:
            post_to(receiver, "/hook", allow_http_hosts=http_hosts)
        # then the address policy refuses it before any connection
        assert caught.value.code == "address_not_allowed"
        assert not caught.value.retryable
        assert "127.0.0.1" not in str(caught.value)
    assert connects == []
    assert receiver.accepted == 0


@pytest.mark.parametrize(
    "answer",
    [
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["100.64.0.1"],
        ["93.184.216.34", "192.168.0.10"],
        ["::ffff:127.0.0.1"],
        ["fd00:ec2::254"],
    ],
)
def test_host_resolving_to_a_refused_address_is_refused_by_check_url_and_post(
    receiver: ReceiverServer,
    monkeypatch: pytest.MonkeyPatch,
    connects: list[str],
    answer: list[str],
) -> None:
    # given a name whose DNS answer includes a refused address
    FakeDns({"private.test": [answer]}).install(monkeypatch)
    url = receiver.url("/hook", host="private.test")
    # when it is checked at registration, then posted to at send time
    for call in (check_url, _post):
        with pytest.raises(FetchError) as caught:
            call(url)
        # then both refuse it, naming the host and no address
        assert caught.value.code == "address_not_allowed"
        assert not caught.value.retryable
        assert "private.test" in str(caught.value)
        assert not any(address in str(caught.value) for address in answer)
    assert connects == []
    assert receiver.accepted == 0


def test_dns_flipping_to_loopback_after_check_url_is_refused_at_post(
    receiver: ReceiverServer, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    # given a name answering a public address at registration and loopback afterwards
    dns = FakeDns({PINNED_NAME: [["93.184.216.34"], ["127.0.0.1"]]})
    dns.install(monkeypatch)
    url = receiver.url("/hook", host=PINNED_NAME)
    # when it is checked (and passes), then posted to
    check_url(url)
    with pytest.raises(FetchError) as caught:
        _post(url)
    # then post looked the name up again and refused the new answer without connecting
    assert caught.value.code == "address_not_allowed"
    assert dns.lookups.count(PINNED_NAME) == 2
    assert connects == []
    assert receiver.accepted == 0


def test_post_connects_only_to_the_checked_address(
    receiver: ReceiverServer, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    # given an exempted name answering the receiver first and another address on later lookups
    dns = FakeDns({PINNED_NAME: [["127.0.0.1"], ["127.0.0.2"]]})
    dns.install(monkeypatch)
    # when it is posted to
    sent = post(
        receiver.url("/hook", host=PINNED_NAME),
        body=BODY,
        headers={},
        allow_http_hosts=frozenset({f"{PINNED_NAME}:{receiver.port}"}),
        ca_file=receiver.ca_file,
    )
    # then one lookup, one connection to that answer, TLS and Host for the name
    assert sent.status == 200
    assert dns.lookups.count(PINNED_NAME) == 1
    assert connects == ["127.0.0.1"]
    assert [r.headers["host"] for r in receiver.received] == [f"{PINNED_NAME}:{receiver.port}"]


def test_unknown_name_is_a_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a name the resolver does not know
    FakeDns({"gone.test": [[]]}).install(monkeypatch)
    # when it is checked / then it fails as DNS, not retryable
    with pytest.raises(FetchError) as caught:
        check_url("https://gone.test/hook")
    assert caught.value.code == "dns_failed"
    assert not caught.value.retryable


def _check(receiver: ReceiverServer, path: str, *, allow_http_hosts: frozenset[str]) -> None:
    check_url(receiver.url(path), allow_http_hosts=allow_http_hosts)


def _post(url: str) -> None:
    post(url, body=BODY, headers={})


@pytest.mark.parametrize(
    "url",
    [
        "https://1.1.1.1/\ud800",
        "https://1.1.1.1/a\x00b",
        "https://1.1.1.1/a b",
    ],
)
def test_a_url_with_a_space_a_control_character_or_a_lone_surrogate_is_refused(url: str) -> None:
    with pytest.raises(FetchError) as refused:
        check_url(url)
    assert refused.value.code == "invalid_url"


# --- a resolver that does not answer ----------------------------------------------------------


def test_a_lookup_that_does_not_answer_ends_at_the_deadline_as_a_retryable_dns_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a resolver that takes 3 s to answer for a name
    real = socket.getaddrinfo

    def slow(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow.test":
            time.sleep(3)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    monkeypatch.setattr(addresses, "LOOKUP_TIMEOUT_S", 0.3, raising=False)
    # when a send with a 0.5 s deadline, and a check at submit, meet it
    for call, bound_s in (
        (lambda: post("https://slow.test/hook", body=BODY, headers={}, timeout=0.5), 0.5),
        (lambda: check_url("https://slow.test/hook"), 0.3),
    ):
        started = time.monotonic()
        with pytest.raises(FetchError) as caught:
            call()
        # then each gives up at its bound, as a DNS failure worth another try
        assert time.monotonic() - started < bound_s + 0.5
        assert (caught.value.code, caught.value.retryable) == ("dns_failed", True)
        assert "slow.test" in str(caught.value)
