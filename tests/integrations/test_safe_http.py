"""integrations.safe_http against real HTTPS servers on loopback, with a test CA made per module.

DNS is the one thing faked (socket.getaddrinfo, for made-up names only): it is how a rebinding
attacker would act, and no test may need the internet.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import urllib3.util.connection
from PIL import Image

from integrations.safe_http import FetchError, address_is_public, fetch
from tests.support.https import PINNED_NAME, HttpsServer, Tls, serve_https

CAP = 64 * 1024


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HttpsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.server.hosts.append(self.headers.get("Host", ""))
        port = self.server.server_address[1]
        if self.path == "/png":
            self._send(200, PNG, "image/png")
        elif self.path == "/exact":
            self._send(200, b"x" * CAP, "image/png")
        elif self.path == "/big-length":
            # Declares too much and then sends nothing: only a client that refuses on the
            # header returns before its timeout.
            self._head(200, {"Content-Length": str(CAP + 1), "Content-Type": "image/png"})
            self.server.release.wait(10)
        elif self.path == "/big-chunked":
            self._head(200, {"Transfer-Encoding": "chunked", "Content-Type": "image/png"})
            for _ in range(CAP // 4096 + 1):
                self.wfile.write(b"1000\r\n" + b"x" * 4096 + b"\r\n")
            self.wfile.flush()
            self.server.release.wait(10)  # never ends the body: the client must stop by itself
        elif self.path == "/big-close":
            self._head(200, {"Connection": "close", "Content-Type": "image/png"})
            self.wfile.write(b"x" * (CAP + 1))
            self.wfile.flush()
            self.server.release.wait(10)
            self.close_connection = True
        elif self.path == "/drip":
            # 5 s in all: a client without an overall deadline gets the whole body.
            self._head(200, {"Content-Length": "50", "Content-Type": "image/png"})
            for _ in range(50):
                if self.server.release.wait(0.1):
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        elif self.path == "/slow-headers":
            # Each byte well within the socket timeout; the headers alone take 5 s.
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Pad: " + b"x" * 40:
                if self.server.release.wait(0.1):
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            self.close_connection = True
        elif self.path == "/stall":
            self.server.release.wait(10)
            self._send(200, PNG, "image/png")
        elif self.path == "/redirect-same":
            self._redirect(302, "/png")
        elif self.path == "/redirect-metadata":
            self._redirect(302, "https://169.254.169.254/latest/meta-data/iam/")
        elif self.path == "/redirect-ip":
            self._redirect(307, f"https://127.0.0.1:{port}/png")
        elif self.path == "/redirect-http":
            self._redirect(301, f"http://localhost:{port}/png")
        elif self.path == "/loop":
            self._redirect(302, "/loop")
        elif self.path.startswith("/status/"):
            self._send(int(self.path.rsplit("/", 1)[1]), b"nope", "text/plain")
        else:
            self._send(404, b"not found", "text/plain")

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._head(status, {"Content-Type": content_type, "Content-Length": str(len(body))})
        self.wfile.write(body)

    def _redirect(self, status: int, location: str) -> None:
        self._head(status, {"Location": location, "Content-Length": "0"})


@dataclass
class LocalServer:
    httpd: HttpsServer
    tls: Tls

    @property
    def port(self) -> int:
        return self.httpd.port

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture
def server(tls: Tls) -> Iterator[LocalServer]:
    with serve_https(_Handler, tls) as httpd:
        yield LocalServer(httpd=httpd, tls=tls)


def fetch_local(server: LocalServer, path: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "max_bytes": CAP,
        "allow_hosts": frozenset({"localhost"}),
        "ca_file": server.tls.ca_file,
        "timeout": 5.0,
    }
    options.update(kwargs)
    return fetch(server.url(path), **options)


# --- fake DNS for made-up names -----------------------------------------------------------


@dataclass
class FakeDns:
    """Answers for chosen names, one list per lookup (the last one repeats); the rest is real."""

    answers: dict[str, list[list[str]]]
    lookups: list[str] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else str(host)
            self.lookups.append(name)
            if name not in self.answers:
                return real(host, port, *args, **kwargs)
            seen = self.lookups.count(name)
            addresses = self.answers[name][min(seen, len(self.answers[name])) - 1]
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [_addrinfo(address, int(port)) for address in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _addrinfo(address: str, port: int) -> tuple[Any, ...]:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Where urllib3 opens sockets; a public address is refused here so no packet leaves."""
    seen: list[str] = []
    real: Callable[..., socket.socket] = urllib3.util.connection.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        seen.append(address[0])
        if address_is_public(address[0]):
            raise ConnectionRefusedError("test: no outside network")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return seen


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


# --- fetching -----------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "url",
    ["http://localhost:{port}/png", "ftp://localhost:{port}/png", "file:///etc/passwd"],
)
def test_only_https_is_allowed(server: LocalServer, url: str) -> None:
    # given a URL that is not https, to an allowed host
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch(url.format(port=server.port), max_bytes=CAP, allow_hosts=frozenset({"localhost"}))
    # then it is refused without a connection
    assert caught.value.code == "scheme_not_allowed"
    assert server.httpd.accepted == 0


def test_userinfo_is_refused(server: LocalServer) -> None:
    # given a URL carrying a user name and password
    url = f"https://user:secret@localhost:{server.port}/png"
    # when it is fetched
    with pytest.raises(FetchError) as caught:
        fetch(url, max_bytes=CAP, allow_hosts=frozenset({"localhost"}), ca_file=server.tls.ca_file)
    # then it is refused without a connection
    assert caught.value.code == "invalid_url"
    assert server.httpd.accepted == 0


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


def test_connection_is_pinned_to_the_first_answer(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    # given an allowed name answering the server first, then an address where nothing listens
    dns = FakeDns({PINNED_NAME: [["127.0.0.1"], ["127.0.0.2"]]})
    dns.install(monkeypatch)
    # when it is fetched
    result = fetch(
        server.url("/png", host=PINNED_NAME),
        max_bytes=CAP,
        allow_hosts=frozenset({PINNED_NAME}),
        ca_file=server.tls.ca_file,
    )
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
    result = fetch(
        server.url("/png", host=PINNED_NAME),
        max_bytes=CAP,
        allow_hosts=frozenset({PINNED_NAME}),
        ca_file=server.tls.ca_file,
    )
    # then the second checked address serves it
    assert result.data == PNG
    assert connects == ["127.0.0.3", "127.0.0.1"]
