"""A real HTTPS server on loopback for integrations.safe_http, and fake DNS for made-up names.

DNS is the one thing faked (socket.getaddrinfo, for made-up names only): it is how a rebinding
attacker would act, and no test may need the internet. The certificates come from the test CA
(the `tls` fixture).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import pytest

from integrations.safe_http import fetch
from tests.support.https import HttpsServer, QuietHandler, Tls
from tests.support.images import image_bytes

CAP = 64 * 1024


PNG = image_bytes("PNG", (4, 3), (10, 200, 30))


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.server.hosts.append(self.headers.get("Host", ""))
        port = self.server.server_address[1]
        if self.path == "/png":
            self.reply(200, PNG, "image/png")
        elif self.path == "/exact":
            self.reply(200, b"x" * CAP, "image/png")
        elif self.path == "/big-length":
            # Declares too much and then sends nothing: only a client that refuses on the
            # header returns before its timeout.
            self.reply_head(200, {"Content-Length": str(CAP + 1), "Content-Type": "image/png"})
            self.server.release.wait(10)
        elif self.path == "/big-chunked":
            self.reply_head(200, {"Transfer-Encoding": "chunked", "Content-Type": "image/png"})
            for _ in range(CAP // 4096 + 1):
                self.wfile.write(b"1000\r\n" + b"x" * 4096 + b"\r\n")
            self.wfile.flush()
            self.server.release.wait(10)  # never ends the body: the client must stop by itself
        elif self.path == "/big-close":
            self.reply_head(200, {"Connection": "close", "Content-Type": "image/png"})
            self.wfile.write(b"x" * (CAP + 1))
            self.wfile.flush()
            self.server.release.wait(10)
            self.close_connection = True
        elif self.path == "/drip":
            # 5 s in all: a client without an overall deadline gets the whole body.
            self.reply_head(200, {"Content-Length": "50", "Content-Type": "image/png"})
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
            self.reply(200, PNG, "image/png")
        elif self.path == "/redirect-same":
            self.redirect(302, "/png")
        elif self.path == "/redirect-metadata":
            self.redirect(302, "https://169.254.169.254/latest/meta-data/iam/")
        elif self.path == "/redirect-ip":
            self.redirect(307, f"https://127.0.0.1:{port}/png")
        elif self.path == "/redirect-http":
            self.redirect(301, f"http://localhost:{port}/png")
        elif self.path == "/loop":
            self.redirect(302, "/loop")
        elif self.path.startswith("/status/"):
            self.reply(int(self.path.rsplit("/", 1)[1]), b"nope", "text/plain")
        else:
            self.reply(404, b"not found", "text/plain")


@dataclass
class LocalServer:
    httpd: HttpsServer
    tls: Tls

    @property
    def port(self) -> int:
        return self.httpd.port

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"


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
            return [addrinfo(address, int(port)) for address in addresses]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def addrinfo(address: str, port: int) -> tuple[Any, ...]:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
