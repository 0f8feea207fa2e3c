"""Loopback stand-ins for the AWS endpoints a worker talks to on its instance, real HTTP on
127.0.0.1 with each call recorded: the ECS agent's task-protection endpoint (make run's own
stand-in), the instance metadata service (IMDSv2, answered as the AWS documentation says), and
the OTLP/HTTP endpoint of an ADOT collector beside the task (spans, exported to X-Ray)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from sdsaas.local_pools import LocalAgent


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the JSON body, or None
    at: float  # time.time()


class _Endpoint:
    """A threaded HTTP server; subclasses answer in `answer(call) -> (status, body)`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                call = Call(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw.strip().startswith((b"{", b"[")) else None,
                    time.time(),
                )
                with endpoint.lock:
                    endpoint.calls.append(call)
                    status, body = endpoint.answer(call)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, call: Call) -> tuple[int, Any]:
        raise NotImplementedError

    def __enter__(self) -> Any:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def recorded(self, method: str, path: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method and c.path == path]


@dataclass(frozen=True)
class Protect:
    """One PUT to the agent: what the worker asked for, and when."""

    worker: str
    enabled: bool
    minutes: int
    at: float  # time.time()


class RecordingEcsAgent(LocalAgent):
    """`make run`'s loopback ECS agent (sdsaas/local_pools.py), each PUT kept (those it refused
    too); while `down`, it answers 500 as the agent does when it fails."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[Protect] = []
        self.down = False

    def protect(self, worker: str, *, enabled: bool, minutes: int) -> dt.datetime | None:
        self.puts.append(Protect(worker, enabled, minutes, time.time()))
        if self.down:
            raise RuntimeError("agent unavailable")
        return super().protect(worker, enabled=enabled, minutes=minutes)

    def states(self, worker: str) -> list[bool]:
        """Each PUT's ProtectionEnabled, in order."""
        return [put.enabled for put in self.puts if put.worker == worker]


class FakeImds(_Endpoint):
    """IMDSv2: a token from `PUT /latest/api/token`, then `spot/instance-action` with it (401
    without; 404 until `notice` is called)."""

    ACTION = "/latest/meta-data/spot/instance-action"

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()
        self.action: dict[str, str] | None = None

    def notice(self, *, in_s: float, action: str = "terminate") -> None:
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=in_s)
        with self.lock:
            self.action = {"action": action, "time": at.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def answer(self, call: Call) -> tuple[int, Any]:
        if call.method == "PUT" and call.path == "/latest/api/token":
            if "x-aws-ec2-metadata-token-ttl-seconds" not in call.headers:
                return 400, b""
            token = secrets.token_urlsafe(16)
            self.tokens.add(token)
            return 200, token.encode()
        if call.headers.get("x-aws-ec2-metadata-token") not in self.tokens:
            return 401, b""
        if call.method == "GET" and call.path == self.ACTION and self.action is not None:
            return 200, self.action
        return 404, b"Not Found"


class OtlpCollector(_Endpoint):
    """Takes every POST (protobuf spans at /v1/traces) with a 200."""

    def answer(self, call: Call) -> tuple[int, Any]:
        return 200, b""
