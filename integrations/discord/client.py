"""The one Discord HTTP client: every call to Discord's API goes through DiscordClient.

Interaction-token routes (`/webhooks/{application}/{token}/...`) carry no Authorization and are
not bound by the bot's global rate limit; bot routes carry `Authorization: Bot <token>`.
Rate limits follow Discord's headers (docs/topics/rate-limits): each route's bucket is learned
from `X-RateLimit-Bucket` and tracked per top-level resource, and a call on an exhausted bucket
or a globally limited bot waits when the limit ends within settings.DISCORD_MAX_WAIT_S, else
fails as retryable without being sent, so its task retries later instead of earning 429s.

Tokens are secrets: they appear in no log line and no error message (see _Route.shown).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import quote

import certifi
import urllib3
from django.conf import settings
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.fields import RequestField
from urllib3.filepost import encode_multipart_formdata

log = logging.getLogger(__name__)

# A 429 is waited out and the call sent again at most this many times; then it fails retryable.
_MAX_429_RETRIES = 2
# Interaction tokens live 15 minutes, so their buckets pile up: expired ones are dropped
# once there are more than this many.
_PRUNE_ABOVE = 256

try:
    _VERSION = metadata.version("sdsaas")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    _VERSION = "0"


class DiscordError(Exception):
    """A Discord call that did not succeed.

    `status` is the HTTP status (None when no answer came: timeout, connection failure);
    `code` Discord's JSON error code (e.g. 50027 invalid webhook token, 10008 unknown message);
    `retryable` says whether the same call can succeed later (timeouts, connection errors, 5xx
    and 429), and `retry_after` how many seconds to wait first when Discord or an exhausted
    bucket said so. The message names the route with its token redacted.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class _Route:
    method: str
    template: str  # e.g. "/channels/{channel_id}/messages": one bucket per method and template
    path: str  # what is sent, tokens included
    shown: str  # the path for logs and errors: tokens replaced by "***"
    major: str  # the top-level resource Discord keys the bucket with (no secret in clear)
    bot: str | None  # a fingerprint of the bot token for bot routes; None for interaction routes

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"

    def __str__(self) -> str:
        return f"{self.method} {self.shown}"


def _fingerprint(secret: str) -> str:
    # Rate-limit state is keyed by tokens without holding them: the dicts outlive the calls.
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _seg(value: str) -> str:
    return quote(value, safe="")


def _webhook_route(method: str, suffix: str, application_id: str, token: str) -> _Route:
    # Discord keys webhook buckets by webhook id + token; the token is a top-level resource.
    base = f"/webhooks/{_seg(application_id)}"
    return _Route(
        method=method,
        template="/webhooks/{application_id}/{token}" + suffix,
        path=f"{base}/{_seg(token)}{suffix}",
        shown=f"{base}/***{suffix}",
        major=f"webhook:{application_id}:{_fingerprint(token)}",
        bot=None,
    )


def _bot_route(method: str, template: str, path: str, bot_token: str, major: str) -> _Route:
    bot = _fingerprint(bot_token)
    # Per-route limits are per bot too, so the bot is part of the resource key.
    return _Route(method, template, path, path, f"{bot}:{major}", bot)


@dataclass
class _Bucket:
    limit: int
    remaining: int
    reset_at: float  # time.monotonic()
    window: float  # the longest Reset-After seen: about the length of the bucket's window


class _RateLimits:
    """Discord's rate-limit state for one process, shared by its threads.

    A call reserves one request of its bucket before it is sent (so concurrent threads do not
    all spend the last one), and the answer's headers then correct the count.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._route_buckets: dict[str, str] = {}  # route key -> X-RateLimit-Bucket
        self._buckets: dict[tuple[str, str], _Bucket] = {}  # (bucket, major) -> state
        self._global_until: dict[str, float] = {}  # bot fingerprint -> monotonic end

    def reserve(self, route: _Route, *, max_wait: float) -> None:
        """Return when `route` may be sent; wait up to `max_wait` s for a limit to end, or raise
        DiscordError(retryable, retry_after) without waiting when it ends later."""
        while True:
            wait = self._try_reserve(route)
            if wait <= 0:
                return
            if wait > max_wait:
                raise DiscordError(
                    f"Discord {route}: rate limited for {wait:.2f} s, not sent",
                    status=None,
                    retryable=True,
                    retry_after=wait,
                )
            log.info("discord %s: rate limited, waiting %.2f s", route, wait)
            time.sleep(wait)

    def _try_reserve(self, route: _Route) -> float:
        """0 when a request was reserved, else the seconds until one may be."""
        with self._lock:
            now = time.monotonic()
            if route.bot is not None:
                until = self._global_until.get(route.bot, 0.0)
                if until > now:
                    return until - now
            bucket_id = self._route_buckets.get(route.key)
            bucket = self._buckets.get((bucket_id, route.major)) if bucket_id else None
            if bucket is None:
                return 0.0  # not learnt yet: Discord's headers will tell
            if bucket.reset_at <= now:
                # A new window; until an answer says when it ends, assume it lasts as the last.
                bucket.remaining = max(bucket.limit, 1)
                bucket.reset_at = now + bucket.window
            if bucket.remaining > 0:
                bucket.remaining -= 1
                return 0.0
            return bucket.reset_at - now

    def record(self, route: _Route, headers: Mapping[str, str]) -> None:
        """Learn the route's bucket and its state from an answer's X-RateLimit-* headers."""
        bucket_id = headers.get("x-ratelimit-bucket")
        remaining = _number(headers.get("x-ratelimit-remaining"))
        reset_after = _number(headers.get("x-ratelimit-reset-after"))
        if not bucket_id or remaining is None or reset_after is None:
            return
        limit = _number(headers.get("x-ratelimit-limit"))
        with self._lock:
            now = time.monotonic()
            reset_at = now + reset_after
            self._route_buckets[route.key] = bucket_id
            key = (bucket_id, route.major)
            known = self._buckets.get(key)
            left = int(remaining)
            window = reset_after
            if known is not None:
                window = max(window, known.window)
                if known.reset_at > now and abs(known.reset_at - reset_at) < 1:
                    # Same window: answers to concurrent calls arrive in any order, and the
                    # local count already holds reservations of calls still in flight.
                    left = min(left, known.remaining)
            self._buckets[key] = _Bucket(
                limit=int(limit) if limit is not None else left + 1,
                remaining=left,
                reset_at=reset_at,
                window=window,
            )
            if len(self._buckets) > _PRUNE_ABOVE:
                self._prune(now)

    def limited(self, route: _Route, *, retry_after: float, is_global: bool) -> None:
        """Record a 429: the bot's global limit, or the route's bucket, is spent until then."""
        with self._lock:
            until = time.monotonic() + retry_after
            if is_global:
                # Interaction routes are not bound by the global limit: only bots are blocked.
                if route.bot is not None:
                    self._global_until[route.bot] = max(
                        self._global_until.get(route.bot, 0.0), until
                    )
                return
            bucket_id = self._route_buckets.get(route.key)
            bucket = self._buckets.get((bucket_id, route.major)) if bucket_id else None
            if bucket is not None:
                # A shared-resource 429 can outlast the bucket's own window (Remaining > 0).
                bucket.remaining = 0
                bucket.reset_at = max(bucket.reset_at, until)

    def _prune(self, now: float) -> None:
        for key in [key for key, bucket in self._buckets.items() if bucket.reset_at < now]:
            del self._buckets[key]
        for bot in [bot for bot, until in self._global_until.items() if until < now]:
            del self._global_until[bot]


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:  # a proxy's HTML error page
            return None


class DiscordClient:
    """Discord's HTTP API. Thread-safe; the rate-limit state lives in the instance, so a
    process uses one (discord_client())."""

    def __init__(self, *, base_url: str | None = None) -> None:
        self._base_url = base_url.rstrip("/") if base_url else None
        self._limits = _RateLimits()
        # Retries are ours (429 only); redirects are never expected from Discord's API.
        # certifi's roots, as integrations.safe_http: the same on every image.
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=8, retries=False, ca_certs=certifi.where()
        )

    # --- interaction-token routes ----------------------------------------------------------

    def interaction_original_edit(
        self,
        *,
        application_id: str,
        token: str,
        payload: dict[str, Any],
        files: Sequence[Attachment] = (),
    ) -> dict[str, Any]:
        """Edit the interaction's original (deferred) response; returns the message object."""
        route = _webhook_route("PATCH", "/messages/@original", application_id, token)
        return self._message(route, payload, files)

    # --- bot routes ------------------------------------------------------------------------

    def channel_message_create(
        self,
        *,
        bot_token: str,
        channel_id: str,
        payload: dict[str, Any],
        files: Sequence[Attachment] = (),
    ) -> dict[str, Any]:
        path = f"/channels/{_seg(channel_id)}/messages"
        route = _bot_route(
            "POST", "/channels/{channel_id}/messages", path, bot_token, f"channel:{channel_id}"
        )
        return self._message(route, payload, files, bot_token=bot_token)

    def channel_message_delete(self, *, bot_token: str, channel_id: str, message_id: str) -> None:
        path = f"/channels/{_seg(channel_id)}/messages/{_seg(message_id)}"
        template = "/channels/{channel_id}/messages/{message_id}"
        route = _bot_route("DELETE", template, path, bot_token, f"channel:{channel_id}")
        self._call(route, bot_token=bot_token)

    def commands_overwrite(
        self, *, bot_token: str, application_id: str, commands: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Replace the application's global commands with `commands`; returns them with ids."""
        path = f"/applications/{_seg(application_id)}/commands"
        template = "/applications/{application_id}/commands"
        route = _bot_route("PUT", template, path, bot_token, f"application:{application_id}")
        body = json.dumps(commands).encode()
        answer = self._call(route, bot_token=bot_token, body=body, content_type="application/json")
        result = answer.json()
        if not isinstance(result, list):
            raise _unexpected(route, answer)
        return result

    # --- the exchange ----------------------------------------------------------------------

    def _message(
        self,
        route: _Route,
        payload: dict[str, Any],
        files: Sequence[Attachment],
        *,
        bot_token: str | None = None,
    ) -> dict[str, Any]:
        body, content_type = _encode(payload, files)
        answer = self._call(route, bot_token=bot_token, body=body, content_type=content_type)
        result = answer.json()
        if not isinstance(result, dict):
            raise _unexpected(route, answer)
        return result

    def _call(
        self,
        route: _Route,
        *,
        bot_token: str | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> _Answer:
        """Send `route`, waiting out short rate limits; the 2xx answer, or DiscordError."""
        headers = {"User-Agent": f"DiscordBot ({settings.PUBLIC_BASE_URL}, {_VERSION})"}
        if bot_token is not None:
            headers["Authorization"] = f"Bot {bot_token}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        max_wait = float(settings.DISCORD_MAX_WAIT_S)
        for attempt in range(_MAX_429_RETRIES + 1):
            self._limits.reserve(route, max_wait=max_wait)
            answer = self._send(route, headers, body)
            self._limits.record(route, answer.headers)
            if answer.status < 300:
                return answer
            if answer.status != 429:
                raise _status_error(route, answer)
            retry_after, is_global = _rate_limited(answer)
            self._limits.limited(route, retry_after=retry_after, is_global=is_global)
            scope = "global" if is_global else answer.headers.get("x-ratelimit-scope", "route")
            if retry_after > max_wait or attempt == _MAX_429_RETRIES:
                raise DiscordError(
                    f"Discord {route}: 429 rate limited ({scope}) for {retry_after:.2f} s",
                    status=429,
                    code=_code(answer),
                    retryable=True,
                    retry_after=retry_after,
                )
            log.warning("discord %s: 429 (%s), retrying in %.2f s", route, scope, retry_after)
            time.sleep(retry_after)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(self, route: _Route, headers: dict[str, str], body: bytes | None) -> _Answer:
        base = self._base_url or str(settings.DISCORD_API_BASE).rstrip("/")
        timeout = urllib3.Timeout(
            connect=float(settings.DISCORD_CONNECT_TIMEOUT_S),
            read=float(settings.DISCORD_TIMEOUT_S),
        )
        try:
            response = self._pool.request(
                route.method,
                base + route.path,
                body=body,
                headers=headers,
                timeout=timeout,
                redirect=False,
                retries=False,
            )
        except HTTPError as exc:
            # urllib3's messages may carry the URL, token included: only the kind is kept, and
            # `from None` keeps the original out of logged tracebacks too.
            timed_out = isinstance(exc, Urllib3TimeoutError) and not isinstance(
                exc,
                NewConnectionError,  # a refused connect is a ConnectTimeoutError in urllib3
            )
            kind = "timed out" if timed_out else "connection failed"
            raise DiscordError(
                f"Discord {route}: {kind} ({type(exc).__name__})", retryable=True
            ) from None
        return _Answer(
            status=response.status,
            headers={name.lower(): value for name, value in response.headers.items()},
            body=response.data,
        )


def _encode(payload: dict[str, Any], files: Sequence[Attachment]) -> tuple[bytes, str]:
    """The request body and its Content-Type: JSON, or multipart with `payload_json` and
    `files[n]` when there are files (docs/reference, "Uploading Files")."""
    if not files:
        return json.dumps(payload).encode(), "application/json"
    # Each new file is listed in `attachments` by its placeholder id n (files[n]); on an edit,
    # entries the caller gave for existing attachments are kept (unlisted ones are removed),
    # and a caller's entry for placeholder n keeps its other fields (a description).
    placeholders = {str(index) for index in range(len(files))}
    given = {str(entry.get("id")): entry for entry in payload.get("attachments", [])}
    kept = [entry for key, entry in given.items() if key not in placeholders]
    new = [
        {**given.get(str(index), {}), "id": index, "filename": attachment.filename}
        for index, attachment in enumerate(files)
    ]
    document = RequestField("payload_json", json.dumps({**payload, "attachments": kept + new}))
    document.make_multipart(content_type="application/json")
    fields = [document]
    for index, attachment in enumerate(files):
        field = RequestField(f"files[{index}]", attachment.data, filename=attachment.filename)
        field.make_multipart(content_type=attachment.content_type)
        fields.append(field)
    return encode_multipart_formdata(fields)


def _code(answer: _Answer) -> int | None:
    document = answer.json()
    code = document.get("code") if isinstance(document, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _rate_limited(answer: _Answer) -> tuple[float, bool]:
    """(retry_after seconds, global) of a 429: the JSON body's float, else Retry-After."""
    document = answer.json()
    document = document if isinstance(document, dict) else {}
    retry_after = document.get("retry_after")
    if not isinstance(retry_after, int | float) or isinstance(retry_after, bool):
        retry_after = _number(answer.headers.get("retry-after"))
    is_global = document.get("global") is True or (
        answer.headers.get("x-ratelimit-global", "").lower() == "true"
    )
    # No figure at all (a proxy's 429): a second, so the caller backs off rather than spins.
    return max(float(retry_after if retry_after is not None else 1.0), 0.0), is_global


def _status_error(route: _Route, answer: _Answer) -> DiscordError:
    document = answer.json()
    said = document.get("message") if isinstance(document, dict) else None
    code = _code(answer)
    detail = f": {said}" if isinstance(said, str) else ""
    detail += f" (code {code})" if code is not None else ""
    return DiscordError(
        f"Discord {route}: {answer.status}{detail}",
        status=answer.status,
        code=code,
        # 4xx will fail the same way again (a bad payload, an expired token, a lost permission).
        retryable=answer.status >= 500,
    )


def _unexpected(route: _Route, answer: _Answer) -> DiscordError:
    return DiscordError(
        f"Discord {route}: {answer.status} with an unexpected body", status=answer.status
    )


@functools.cache
def discord_client() -> DiscordClient:
    """The process's client: its rate-limit state must be shared by all callers to be right."""
    return DiscordClient()
