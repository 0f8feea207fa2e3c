"""A webhook receiver on loopback for post(): over TLS with the test CA, or plain http. It records
each request as it arrived and answers by path; every TCP connection is counted, so one that
should never be dialled serves as a canary."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from integrations.safe_http import Sent, post
from tests.support.https import HttpsServer, QuietHandler, Tls, serving, use_tls

BODY = b'{"type":"job.succeeded","data":{"id":"job_1"}}'

LONG_BODY = 64 * 1024  # what /long sends at once, of the far longer length it announces
STALLED_PART = b"0123456789"  # what /stall-body sends of the 100 bytes it announces


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class ReceiverServer(HttpsServer):
    def __init__(self, tls: Tls | None) -> None:
        super().__init__(ReceiverHandler)
        self.received: list[Received] = []
        self.location = "/elsewhere"  # where /status/3xx points
        self.ca_file = tls.ca_file if tls is not None else None
        if tls is not None:
            use_tls(self, tls)

    def url(self, path: str, host: str = "localhost") -> str:
        scheme = "http" if self.ca_file is None else "https"
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def authority(self) -> str:
        """The "host:port" entry that lets post() reach it by the name localhost."""
        return f"localhost:{self.port}"


class ReceiverHandler(QuietHandler):
    protocol_version = "HTTP/1.1"
    server: ReceiverServer

    def do_GET(self) -> None:
        self._record(b"")
        self.reply(200, b"get", "text/plain")

    def do_POST(self) -> None:
        self._record(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        if self.path == "/hook":
            self.reply(200, b"ok", "text/plain")
        elif self.path.startswith("/status/"):
            self._status(int(self.path.rsplit("/", 1)[1]))
        elif self.path == "/long":
            self.reply_head(200, {"Content-Length": str(100 * LONG_BODY)})
            self.wfile.write(b"x" * LONG_BODY)
            self.wfile.flush()
            self.server.release.wait(10)  # the rest never comes: the client must stop reading
        elif self.path == "/stall-body":
            self.reply_head(200, {"Content-Length": "100"})
            self.wfile.write(STALLED_PART)
            self.wfile.flush()
            self.server.release.wait(10)
        elif self.path == "/stall":
            self.server.release.wait(10)  # no answer at all
        else:
            self.reply(404, b"not found", "text/plain")

    def _status(self, status: int) -> None:
        if status == 204:
            self.reply_head(204, {})
        elif 300 <= status < 400:
            self.reply_head(status, {"Location": self.server.location, "Content-Length": "0"})
        elif status == 429:
            body = b"slow down"
            self.reply_head(429, {"Retry-After": "120", "Content-Length": str(len(body))})
            self.wfile.write(body)
        else:
            self.reply(status, f"status {status}".encode(), "text/plain")

    def _record(self, body: bytes) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.received.append(Received(self.command, self.path, headers, body))


@contextlib.contextmanager
def serve_receiver(tls: Tls | None) -> Iterator[ReceiverServer]:
    """A receiver on 127.0.0.1, over TLS when `tls` is given, until the block ends."""
    with serving(ReceiverServer(tls)) as httpd:
        yield httpd


# --- listeners that never answer ----------------------------------------------------------


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose listener never accepts: the kernel completes TCP connects (the backlog has
    room), and then nothing answers, not even a TLS handshake."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


@contextlib.contextmanager
def syn_dropping_port() -> Iterator[int | None]:
    """A port whose accept queue is full, so the kernel drops new SYNs (Linux does) and a
    connect hangs; None where this system does not behave so (the caller skips)."""
    sockets: list[socket.socket] = []
    try:
        listener = socket.socket()
        sockets.append(listener)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        yield port if _fill_backlog(port, sockets) else None
    finally:
        for sock in sockets:
            sock.close()


def _fill_backlog(port: int, sockets: list[socket.socket]) -> bool:
    """Connect until one connect hangs: True once the listener drops SYNs."""
    for _ in range(8):
        filler = socket.socket()
        sockets.append(filler)
        filler.settimeout(0.3)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            return True
        except OSError:
            return False
    return False


def post_to(receiver: ReceiverServer, path: str, **overrides: Any) -> Sent:
    """post() to `receiver` by the name localhost, exempted by its host:port, with the test CA."""
    options: dict[str, Any] = {
        "body": BODY,
        "headers": {"Content-Type": "application/json"},
        "allow_http_hosts": frozenset({receiver.authority}),
        "ca_file": receiver.ca_file,
        "timeout": 5.0,
    }
    options.update(overrides)
    return post(receiver.url(path), **options)
