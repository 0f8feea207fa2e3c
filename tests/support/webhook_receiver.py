"""A webhook receiver on loopback (plain HTTP) that verifies what it gets with `standardwebhooks`,
as a tenant's receiver would, and answers what the test tells it to."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified_by: list[str]  # the secrets (of those the test gave) whose signature verifies

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


@dataclass
class Receiver:
    """Answers each request with the next of `answers` (status, headers), then `default`."""

    port: int = 0
    secrets: list[str] = field(default_factory=list)
    answers: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    default: tuple[int, dict[str, str]] = (204, {})
    reply: bytes = b"ok"  # the body of every answer
    received: list[Received] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}{path}"

    def verifying(self, data: bytes, headers: dict[str, str]) -> list[str]:
        good = []
        for secret in self.secrets:
            with contextlib.suppress(WebhookVerificationError):
                Webhook(secret).verify(data, headers)
                good.append(secret)
        return good

    def unique(self) -> list[Received]:
        """What a receiver that dedupes on `webhook-id` keeps (the first of each id)."""
        seen: dict[str, Received] = {}
        for item in self.received:
            if item.verified_by:
                seen.setdefault(item.id, item)
        return list(seen.values())


@contextlib.contextmanager
def webhook_receiver(*secrets: str) -> Iterator[Receiver]:
    receiver = Receiver(secrets=list(secrets))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            verified = receiver.verifying(body, headers)
            receiver.received.append(Received(self.path, headers, body, verified))
            status, extra = receiver.answers.popleft() if receiver.answers else receiver.default
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(receiver.reply)))
            self.end_headers()
            self.wfile.write(receiver.reply)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
