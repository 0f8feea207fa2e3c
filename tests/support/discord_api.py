"""A small Discord-compatible HTTP API on loopback (plain HTTP) that records every call.

It answers the routes sdsaas uses as Discord does (message objects, 204s, Discord's JSON errors),
checks the User-Agent and, on bot routes, `Authorization: Bot <token>`, and can be scripted:
failures (429, 5xx, ...), stalls, expired interaction tokens and small rate-limit buckets that
send real X-RateLimit-* headers and answer 429 when spent.

    with FakeDiscord() as fake:
        settings.DISCORD_API_BASE = fake.api_base
        ...
        [call] = fake.calls_to("PATCH", r"/webhooks/\\d+/[^/]+/messages/@original")
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

PREFIX = "/api/v10"
DEFAULT_CHANNEL_ID = "1180000000000000001"  # where interaction replies live
RATE_LIMITED = {"message": "You are being rate limited.", "retry_after": 0.3, "global": False}
USER_AGENT = re.compile(r"DiscordBot \(\S+, \S+\)")

Json = Any


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # without PREFIX and without the query
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    json: Json  # the JSON body, or a multipart body's parsed payload_json; None without
    files: dict[str, tuple[str, bytes, str]]  # "files[n]" -> (filename, data, content type)
    at: float  # time.monotonic() when it arrived
    status: int  # what the fake answered


@dataclass(frozen=True)
class _Route:
    name: str  # also the rate-limit group bucket_limit() takes
    methods: frozenset[str]
    pattern: re.Pattern[str]
    bot: bool  # needs `Authorization: Bot <token>`


_ROUTES = [
    _Route(
        "original",
        frozenset({"GET", "PATCH", "DELETE"}),
        re.compile(r"/webhooks/(?P<app>[^/]+)/(?P<token>[^/]+)/messages/@original"),
        bot=False,
    ),
    _Route(
        "followup",
        frozenset({"POST"}),
        re.compile(r"/webhooks/(?P<app>[^/]+)/(?P<token>[^/]+)"),
        bot=False,
    ),
    _Route(
        "channel_message_create",
        frozenset({"POST"}),
        re.compile(r"/channels/(?P<channel>[^/]+)/messages"),
        bot=True,
    ),
    _Route(
        "channel_message_delete",
        frozenset({"DELETE"}),
        re.compile(r"/channels/(?P<channel>[^/]+)/messages/(?P<message>[^/]+)"),
        bot=True,
    ),
    _Route(
        "commands_overwrite",
        frozenset({"PUT"}),
        re.compile(r"/applications/(?P<app>[^/]+)/commands"),
        bot=True,
    ),
]


@dataclass
class _Script:
    method: str
    pattern: re.Pattern[str]
    times: int
    status: int = 0  # 0: a stall, answered normally after `stall_s`
    body: Json = None
    headers: dict[str, str] = field(default_factory=dict)
    stall_s: float = 0.0


@dataclass
class _Window:
    remaining: int
    reset_at: float


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Json = None  # None: no body (204)
    headers: dict[str, str] = field(default_factory=dict)


def snowflake(key: str) -> str:
    """A stable snowflake-shaped id (19 digits) for `key`."""
    return str((1 << 60) + int(hashlib.sha256(key.encode()).hexdigest()[:14], 16))


def _error(status: int, message: str, code: int = 0) -> _Answer:
    return _Answer(status, {"message": message, "code": code})


class FakeDiscord:
    """Discord's API on 127.0.0.1 (a free port) in a daemon thread, until close()/the block ends.

    `bot_tokens`: the tokens bot routes accept (any when empty).
    """

    def __init__(self, *, bot_tokens: Iterable[str] = (), channel_id: str = DEFAULT_CHANNEL_ID):
        self.bot_tokens = frozenset(bot_tokens)
        self.channel_id = channel_id
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._scripts: list[_Script] = []
        self._expired: set[str] = set()
        self._deleted: set[str] = set()  # tokens whose original response was deleted
        self._originals: dict[str, dict[str, Json]] = {}
        self._commands: dict[str, list[dict[str, Json]]] = {}
        self._limits: dict[str | None, tuple[int, float]] = {}  # route name (None: all)
        self._windows: dict[tuple[str, str], _Window] = {}
        self._ids = itertools.count(1_200_000_000_000_000_000)
        self._release = threading.Event()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # --- where and what ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        """The calls with this method whose path matches `path_regex` in full."""
        pattern = re.compile(path_regex)
        with self._lock:
            return [c for c in self.calls if c.method == method and pattern.fullmatch(c.path)]

    def wait_for(self, predicate: Callable[[list[Call]], bool], timeout: float = 5.0) -> list[Call]:
        """Poll until `predicate(calls)` holds; the calls then. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                calls = list(self.calls)
            if predicate(calls):
                return calls
            if time.monotonic() >= deadline:
                seen = [f"{c.method} {c.path} -> {c.status}" for c in calls]
                raise AssertionError(f"not seen within {timeout} s; calls: {seen}")
            time.sleep(0.02)

    def original(self, token: str) -> dict[str, Json]:
        """The interaction's original response as it stands (what GET @original answers)."""
        with self._lock:
            return dict(self._original(token))

    # --- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        body: Json = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` matching calls with `status` (a 429 gets RATE_LIMITED and a
        Retry-After header unless `body`/`headers` say otherwise; others Discord's error shape).
        """
        if body is None:
            body = dict(RATE_LIMITED) if status == 429 else {"message": f"{status}", "code": 0}
        extra = dict(headers or {})
        if status == 429 and isinstance(body, dict) and "retry_after" in body:
            extra.setdefault("Retry-After", str(math.ceil(float(body["retry_after"]))))
            if body.get("global"):
                extra.setdefault("X-RateLimit-Global", "true")
                extra.setdefault("X-RateLimit-Scope", "global")
        script = _Script(method, re.compile(path_regex), times, status, body, extra)
        with self._lock:
            self._scripts.append(script)

    def stall_next(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        """Hold the next `times` matching calls for `seconds` before answering them normally."""
        with self._lock:
            self._scripts.append(
                _Script(method, re.compile(path_regex), times, status=0, stall_s=seconds)
            )

    def expire_token(self, token: str) -> None:
        """From now on the interaction token's routes answer 401 Invalid Webhook Token."""
        with self._lock:
            self._expired.add(token)

    def bucket_limit(self, limit: int, per_s: float, route: str | None = None) -> None:
        """Give `route` (a route name, e.g. "original", "channel_message_create"; None: every
        route) a bucket of `limit` calls per `per_s` s per top-level resource, announced in
        X-RateLimit-* headers on each answer; a call on a spent bucket gets a 429."""
        with self._lock:
            self._limits[route] = (limit, per_s)

    # --- life --------------------------------------------------------------------------------

    def close(self) -> None:
        self._release.set()  # ends stalls
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeDiscord:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- answering (called by the handler threads) --------------------------------------------

    def _handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[Call, _Answer]:
        at = time.monotonic()
        url = urlsplit(target)
        path = unquote(url.path)
        query = dict(parse_qsl(url.query))
        document, files, bad = _parse_body(headers, body)
        inner = path[len(PREFIX) :] if path.startswith(PREFIX + "/") else path
        answer = bad or self._answer(method, path, inner, headers, document, files)
        call = Call(method, inner, query, headers, document, files, at, answer.status)
        with self._lock:
            self.calls.append(call)
        return call, answer

    def _answer(
        self,
        method: str,
        path: str,
        inner: str,
        headers: dict[str, str],
        document: Json,
        files: dict[str, tuple[str, bytes, str]],
    ) -> _Answer:
        if not USER_AGENT.match(headers.get("user-agent", "")):
            return _error(400, "fake discord: User-Agent must be 'DiscordBot ($url, $version)'")
        scripted = self._scripted(method, inner)
        if scripted is not None:
            return scripted
        if not path.startswith(PREFIX + "/"):
            return _error(404, "404: Not Found")
        for route in _ROUTES:
            found = route.pattern.fullmatch(inner)
            if found is not None and method in route.methods:
                return self._route(route, method, found.groupdict(), headers, document, files)
        return _error(404, "404: Not Found")

    def _scripted(self, method: str, path: str) -> _Answer | None:
        with self._lock:
            script = next(
                (
                    s
                    for s in self._scripts
                    if s.times > 0 and s.method == method and s.pattern.fullmatch(path)
                ),
                None,
            )
            if script is None:
                return None
            script.times -= 1
        if script.status == 0:
            self._release.wait(script.stall_s)
            return None
        return _Answer(script.status, script.body, script.headers)

    def _route(
        self,
        route: _Route,
        method: str,
        params: dict[str, str],
        headers: dict[str, str],
        document: Json,
        files: dict[str, tuple[str, bytes, str]],
    ) -> _Answer:
        authorization = headers.get("authorization", "")
        if route.bot:
            token = authorization.removeprefix("Bot ")
            good = (
                token != authorization
                and token
                and (not self.bot_tokens or token in self.bot_tokens)
            )
            if not good:
                return _error(401, "401: Unauthorized")
            major = f"{token}:{params['channel'] if 'channel' in params else params['app']}"
        else:
            if params["token"] in self._expired:
                return _error(401, "Invalid Webhook Token", 50027)
            major = f"{params['app']}:{params['token']}"
        if method in {"POST", "PATCH", "PUT"} and document is None:
            return _error(400, "Invalid Form Body", 50035)
        limited = self._rate_limit(route.name, method, major)
        if limited.status == 429:
            return limited
        with self._lock:
            answer = self._apply(route.name, method, params, document, files)
        return _Answer(answer.status, answer.body, {**answer.headers, **limited.headers})

    def _rate_limit(self, name: str, method: str, major: str) -> _Answer:
        """200 with the bucket's headers (none when unlimited), or the 429 of a spent bucket."""
        with self._lock:
            limit = self._limits.get(name) or self._limits.get(None)
            if limit is None:
                return _Answer(200)
            count, per_s = limit
            now = time.monotonic()
            window = self._windows.get((name, major))
            if window is None or window.reset_at <= now:
                window = self._windows[(name, major)] = _Window(count, now + per_s)
            spent = window.remaining <= 0
            window.remaining = max(window.remaining - 1, 0)
            reset_after = max(window.reset_at - now, 0.0)
            headers = {
                "X-RateLimit-Bucket": hashlib.sha256(f"{method} {name}".encode()).hexdigest()[:16],
                "X-RateLimit-Limit": str(count),
                "X-RateLimit-Remaining": str(window.remaining),
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            }
        if not spent:
            return _Answer(200, headers=headers)
        headers |= {"Retry-After": str(math.ceil(reset_after)), "X-RateLimit-Scope": "user"}
        body = {"message": "You are being rate limited.", "retry_after": round(reset_after, 3)}
        return _Answer(429, {**body, "global": False}, headers)

    def _apply(
        self,
        name: str,
        method: str,
        params: dict[str, str],
        document: Json,
        files: dict[str, tuple[str, bytes, str]],
    ) -> _Answer:
        """The route's effect and answer (under the lock)."""
        if name == "original":
            token = params["token"]
            if token in self._deleted:
                return _error(404, "Unknown Message", 10008)
            message = self._original(token)
            if method == "DELETE":
                self._deleted.add(token)
                return _Answer(204)
            if method == "PATCH":
                self._edit(message, document, files)
            return _Answer(200, dict(message))
        if name == "followup":
            message = self._message(self.channel_id, document, files)
            return _Answer(200, {**message, "webhook_id": params["app"]})
        if name == "channel_message_create":
            return _Answer(200, self._message(params["channel"], document, files))
        if name == "channel_message_delete":
            return _Answer(204)
        # commands_overwrite
        if not isinstance(document, list):
            return _error(400, "Invalid Form Body", 50035)
        app = params["app"]
        self._commands[app] = [
            {
                **command,
                "id": snowflake(f"{app}:{command.get('name')}"),
                "application_id": app,
                "type": command.get("type", 1),
                "version": str(next(self._ids)),
            }
            for command in document
        ]
        return _Answer(200, self._commands[app])

    def _original(self, token: str) -> dict[str, Json]:
        return self._originals.setdefault(
            token,
            {
                "id": snowflake(f"original:{token}"),
                "channel_id": self.channel_id,
                "content": "",
                "embeds": [],
                "attachments": [],
                "type": 20,  # CHAT_INPUT_COMMAND: the reply to a slash command
            },
        )

    def _edit(
        self, message: dict[str, Json], document: Json, files: dict[str, tuple[str, bytes, str]]
    ) -> None:
        # As Discord: a PATCH that lists `attachments` keeps only the existing ones it lists,
        # and adds the uploaded files.
        given = document.get("attachments") if isinstance(document, dict) else None
        kept = message["attachments"]
        if given is not None:
            listed = {str(entry.get("id")) for entry in given}
            kept = [a for a in kept if a["id"] in listed]
        for key, value in (document or {}).items():
            if key != "attachments":
                message[key] = value
        message["attachments"] = kept + self._uploads(message["channel_id"], document, files)
        message["edited_timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())

    def _message(
        self, channel_id: str, document: Json, files: dict[str, tuple[str, bytes, str]]
    ) -> dict[str, Json]:
        fields = {k: v for k, v in (document or {}).items() if k != "attachments"}
        return {
            "content": "",
            "embeds": [],
            **fields,  # message_reference echoed among them
            "id": str(next(self._ids)),
            "channel_id": channel_id,
            "attachments": self._uploads(channel_id, document, files),
            "type": 19 if "message_reference" in fields else 0,  # REPLY or DEFAULT
        }

    def _uploads(
        self, channel_id: str, document: Json, files: dict[str, tuple[str, bytes, str]]
    ) -> list[dict[str, Json]]:
        given = document.get("attachments") if isinstance(document, dict) else None
        described = {str(entry.get("id")): entry for entry in given or []}
        uploaded = []
        for name, (filename, data, content_type) in sorted(files.items()):
            placeholder = name.removeprefix("files[").removesuffix("]")
            attachment_id = str(next(self._ids))
            url = f"https://cdn.discordapp.com/attachments/{channel_id}/{attachment_id}/{filename}"
            entry = {
                "id": attachment_id,
                "filename": filename,
                "size": len(data),
                "url": url,
                "proxy_url": url.replace("cdn.discordapp.com", "media.discordapp.net"),
                "content_type": content_type,
            }
            if "description" in described.get(placeholder, {}):
                entry["description"] = described[placeholder]["description"]
            uploaded.append(entry)
        return uploaded


def _parse_body(
    headers: dict[str, str], body: bytes
) -> tuple[Json, dict[str, tuple[str, bytes, str]], _Answer | None]:
    """(JSON document, files, None) or (None, {}, the 400 Discord would answer)."""
    if not body:
        return None, {}, None
    content_type = headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            return json.loads(body), {}, None
        except ValueError:
            return None, {}, _error(400, "The request body contains invalid JSON.", 50109)
    if content_type.startswith("multipart/form-data"):
        return _parse_multipart(content_type, body)
    return None, {}, _error(400, "Invalid Form Body", 50035)


def _parse_multipart(
    content_type: str, body: bytes
) -> tuple[Json, dict[str, tuple[str, bytes, str]], _Answer | None]:
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    if not message.is_multipart():
        return None, {}, _error(400, "Invalid Form Body", 50035)
    document: Json = None
    files: dict[str, tuple[str, bytes, str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(data, bytes):
            return None, {}, _error(400, "Invalid Form Body", 50035)
        if name == "payload_json":
            try:
                document = json.loads(data)
            except ValueError:
                return None, {}, _error(400, "The request body contains invalid JSON.", 50109)
        elif re.fullmatch(r"files\[\d+\]", name) and part.get_filename():
            files[name] = (str(part.get_filename()), data, part.get_content_type())
        else:
            return None, {}, _error(400, "Invalid Form Body", 50035)
    return document if document is not None else {}, files, None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeDiscord) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out hangs up on a stalled answer: expected


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        _call, answer = self.server.fake._handle(self.command, self.path, headers, body)
        data = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.body is not None:
            self.send_header("Content-Type", "application/json")
        if answer.status != 204:  # a 204 has no body, nor a length
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass
