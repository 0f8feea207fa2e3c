"""integrations.safe_http.addresses: the address policy, and resolving every hop once, checked."""

from __future__ import annotations

import ipaddress

import pytest

from integrations.safe_http import Fetched, FetchError, address_is_public, fetch
from tests.integrations.safe_http.support import CAP, PNG, FakeDns, LocalServer, fetch_local
from tests.support.https import PINNED_NAME

# --- address policy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("2a00:1450:4001:82b::200e", True),
        ("::ffff:8.8.8.8", True),  # mapped, to a public address
        ("64:ff9b::808:808", True),  # NAT64 to 8.8.8.8
        ("2002:808:808::1", True),  # 6to4 through 8.8.8.8
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # EC2/ECS metadata
        ("169.254.170.2", False),  # ECS task credentials
        ("100.64.0.1", False),  # shared CGNAT space
        ("0.0.0.0", False),
        ("0.1.2.3", False),
        ("224.0.0.1", False),  # multicast; Python 3.11 calls it global
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.2.10", False),
        ("198.18.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%1", False),
        ("fc00::1", False),
        ("fd00:ec2::254", False),  # AWS IPv6 metadata
        ("fec0::1", False),
        ("ff02::1", False),
        ("2001:db8::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::127.0.0.1", False),  # IPv4-compatible
        ("::a9fe:a9fe", False),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 to the metadata address; "global" to Python
        ("64:ff9b::7f00:1", False),
        ("64:ff9b:1::808:808", False),  # local-use NAT64 refused outright
        ("2002:a9fe:a9fe::1", False),  # 6to4 through 169.254.169.254; "global" to Python
        ("2002:7f00:1::1", False),
        ("2002:a00:1::1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo refused outright
        ("100::1", False),
    ],
)
def test_address_policy(address: str, public: bool) -> None:
    # given an address from a DNS answer
    # when the policy judges it
    verdict = address_is_public(address)
    # then only globally routable unicast passes, looking through embedded IPv4
    assert verdict is public


def test_address_policy_takes_address_objects() -> None:
    # given ipaddress objects rather than strings
    # when / then they are judged the same way
    assert address_is_public(ipaddress.ip_address("8.8.8.8"))
    assert not address_is_public(ipaddress.ip_address("64:ff9b::a9fe:a9fe"))


def test_loopback_is_refused_by_default_without_connecting(server: LocalServer) -> None:
    # given a URL naming a loopback server, and no allow list
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch_local(server, "/png", allow_hosts=frozenset())
    # then it is refused before any connection
    assert caught.value.code == "address_not_allowed"
    assert not caught.value.retryable
    assert "127.0.0.1" not in str(caught.value)
    assert server.httpd.accepted == 0


def test_unknown_name_is_a_dns_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a name the resolver does not know
    FakeDns({"gone.test": [[]]}).install(monkeypatch)
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch("https://gone.test/a.png", max_bytes=CAP)
    # then it fails as DNS, not retryable
    assert caught.value.code == "dns_failed"
    assert not caught.value.retryable


# --- DNS rebinding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.1"],
        ["93.184.216.34", "127.0.0.1"],
        ["127.0.0.1", "93.184.216.34"],
        ["93.184.216.34", "::ffff:169.254.169.254"],
        ["64:ff9b::a9fe:a9fe"],
    ],
)
def test_name_with_any_internal_address_is_refused(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, connects: list[str], answer: list[str]
) -> None:
    # given a name not on the allow list whose answer includes an internal address
    FakeDns({"evil.test": [answer]}).install(monkeypatch)
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch(server.url("/png", host="evil.test"), max_bytes=CAP, ca_file=server.tls.ca_file)
    # then it is refused and nothing is connected to
    assert caught.value.code == "address_not_allowed"
    assert connects == []
    assert server.httpd.accepted == 0


def test_public_then_loopback_rebinding_connects_only_to_the_checked_address(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    # given a name that answers a public address first and loopback on any later lookup
    dns = FakeDns({"rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    dns.install(monkeypatch)
    # when it is fetched (the public address refuses the connection here)
    with pytest.raises(FetchError) as caught:
        fetch(server.url("/png", host="rebind.test"), max_bytes=CAP, ca_file=server.tls.ca_file)
    # then the name was looked up once and only the checked address was dialled
    assert caught.value.code == "connect_failed"
    assert dns.lookups.count("rebind.test") == 1
    assert connects == ["93.184.216.34"]
    assert server.httpd.accepted == 0


def fetch_pinned_name(server: LocalServer) -> Fetched:
    """Fetch /png by PINNED_NAME, the one allowed host, with the test CA."""
    return fetch(
        server.url("/png", host=PINNED_NAME),
        max_bytes=CAP,
        allow_hosts=frozenset({PINNED_NAME}),
        ca_file=server.tls.ca_file,
    )


def test_connection_is_pinned_to_the_first_answer(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    # given an allowed name answering the server first, then an address where nothing listens
    dns = FakeDns({PINNED_NAME: [["127.0.0.1"], ["127.0.0.2"]]})
    dns.install(monkeypatch)
    # when it is fetched
    result = fetch_pinned_name(server)
    # then it succeeds through the first answer, with SNI/Host for the name, one lookup only
    assert result.data == PNG
    assert dns.lookups.count(PINNED_NAME) == 1
    assert connects == ["127.0.0.1"]
    assert server.httpd.hosts == [f"{PINNED_NAME}:{server.port}"]


def test_unreachable_checked_address_falls_back_to_the_next_checked_one(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    # given an allowed name whose first address refuses connections and second is the server
    FakeDns({PINNED_NAME: [["127.0.0.3", "127.0.0.1"]]}).install(monkeypatch)
    # when it is fetched (127.0.0.3 has no listener on the server's port)
    result = fetch_pinned_name(server)
    # then the second checked address serves it
    assert result.data == PNG
    assert connects == ["127.0.0.3", "127.0.0.1"]
