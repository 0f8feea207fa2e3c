"""One attempt of one message: build the body, sign it, send it, log it, decide what is next.

The body is `{type, timestamp, data}` (Standard Webhooks). `data` is the job as the API returns
it at the time of the attempt, so its output URLs are presigned then and work however late the
attempt. The `webhook-id` is the message's id on every attempt; `webhook-timestamp` is the
attempt's own time; `webhook-signature` holds one signature per secret in use (two during a
rotation window), made with the `standardwebhooks` library.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import re
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from integrations.safe_http import FetchError, Sent, post
from integrations.webhooks.models import (
    EndpointNotice,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.services.dispatch import MAX_ATTEMPTS, next_due
from integrations.webhooks.services.endpoints import job_secret_get, signing_secrets
from jobs.serializers import JobSerializer
from sdsaas import telemetry
from sdsaas.errors import InvalidInput

logger = logging.getLogger(__name__)

RESPONSE_EXCERPT_BYTES = 1024
MAX_RETRY_AFTER = dt.timedelta(hours=24)
# Retry-After in seconds: ASCII digits (str.isdigit takes "²" too), past 24 h held to it anyway.
_SECONDS = re.compile(r"\A[0-9]{1,9}\Z")


def message_body(message: WebhookMessage) -> bytes:
    data: dict[str, Any] = message.data
    if message.job is not None:
        data = dict(JobSerializer(message.job).data)
    body = {"type": message.event_type, "timestamp": message.event_at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":")).encode()


def message_secrets(message: WebhookMessage, *, now: dt.datetime) -> list[str]:
    """Its target's secrets that sign now: its endpoint's, or its tenant's per-job secret."""
    row = message.endpoint or job_secret_get(tenant=message.tenant)
    return signing_secrets(row, now=now)


def signed_headers(message: WebhookMessage, body: bytes, secrets: list[str]) -> dict[str, str]:
    sent_at = dt.datetime.now(dt.UTC)  # the real time: receivers check it against theirs
    signatures = [Webhook(s).sign(message.public_id, sent_at, body.decode()) for s in secrets]
    return {
        "content-type": "application/json",
        "user-agent": "sdsaas-webhooks/1",
        "webhook-id": message.public_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def message_deliver(
    *, message_pk: int, lease: dt.datetime | None = None, now: dt.datetime | None = None
) -> str:
    """Try a message handed to the queue once; how it went: succeeded, retry, failed or gone.

    `lease`: when the dispatch handed it over (its `sending_since` then). Whatever goes wrong
    here is an attempt that failed, logged, on the message's schedule like any other.
    """
    now = now or timezone.now()
    message = _claim(message_pk, lease=lease, now=now)
    if message is None:
        return "gone"  # settled or taken meanwhile (a duplicate task, a lease that ran out)
    endpoint = message.endpoint
    if endpoint is not None and not endpoint.enabled:
        return _record(message, None, "the endpoint is disabled", started=now, now=now, final=True)
    started = timezone.now()
    try:
        return _attempt(message, started=started, now=now)
    except InvalidInput as exc:  # a per-job webhook of a tenant that issued no secret
        return _record(message, None, exc.message[:256], started=started, now=now, final=True)
    except Exception as exc:  # our own failure (a secret key gone, S3 presigning): logged
        logger.exception("webhook message %s: the attempt failed", message.public_id)
        error = f"internal error before an answer: {exc.__class__.__name__}"
        return _record(message, None, error, started=started, now=now)


def _claim(
    message_pk: int, *, lease: dt.datetime | None, now: dt.datetime
) -> WebhookMessage | None:
    """The message, if this task is the one to send it: the one of its dispatch (`lease`), and no
    other task claimed it since. The claim moves `sending_since` on (a duplicate of the task, or
    a second task of an older dispatch, finds it changed), and the lease runs from there."""
    message = (
        WebhookMessage.objects.select_related("endpoint", "job", "tenant")
        .filter(pk=message_pk, status=WebhookMessage.Status.SENDING)
        .first()
    )
    if message is None or message.sending_since is None:
        return None
    if lease is not None and message.sending_since != lease:
        return None
    claimed = max(now, message.sending_since + dt.timedelta(microseconds=1))
    if not _unchanged(message).update(sending_since=claimed):
        return None
    message.sending_since = claimed
    return message


def _unchanged(message: WebhookMessage) -> QuerySet[WebhookMessage]:
    """The message's row as long as this sender holds it."""
    return WebhookMessage.objects.filter(
        pk=message.pk, status=WebhookMessage.Status.SENDING, sending_since=message.sending_since
    )


def _attempt(message: WebhookMessage, *, started: dt.datetime, now: dt.datetime) -> str:
    endpoint = message.endpoint
    secrets = message_secrets(message, now=now)
    body = message_body(message)
    headers = signed_headers(message, body, secrets)
    url = endpoint.url if endpoint is not None else message.job_url
    # A job's message is part of the job's trace (sdsaas/telemetry.py).
    trace_parent = message.job.trace_parent if message.job is not None else ""
    with telemetry.span(
        "webhook.deliver",
        parent=trace_parent,
        event=message.event_type,
        tenant_id=message.tenant_id,
    ) as span:
        try:
            sent: Sent | None = post(
                url,
                body=body,
                headers=headers,
                max_response_bytes=RESPONSE_EXCERPT_BYTES,
                allow_http_hosts=settings.WEBHOOK_ALLOW_HOSTS,
                ca_file=settings.WEBHOOK_CA_FILE,
                connect_timeout=settings.WEBHOOK_CONNECT_TIMEOUT_S,
                timeout=settings.WEBHOOK_TIMEOUT_S,
            )
            error = ""
        except FetchError as exc:
            sent, error = None, exc.message[:256]
        span.set_attribute("outcome", error or f"http {sent.status}" if sent else error)
    return _record(message, sent, error, started=started, now=now)


@transaction.atomic
def _record(
    message: WebhookMessage,
    sent: Sent | None,
    error: str,
    *,
    started: dt.datetime,
    now: dt.datetime,
    final: bool = False,
) -> str:
    """Log the attempt and settle what comes next; `final`: no further attempt can help.

    Only while this sender still holds the message: one whose lease ran out meanwhile was
    handed over again, and what it gets is the next sender's to record ("gone")."""
    if not list(_unchanged(message).select_for_update().values_list("pk", flat=True)):
        logger.warning(
            "webhook message %s: its lease ran out during the attempt", message.public_id
        )
        return "gone"
    attempt = message.attempts + 1
    succeeded = sent is not None and 200 <= sent.status < 300
    WebhookAttempt.objects.create(
        message=message,
        number=attempt,
        started_at=started,
        status_code=sent.status if sent else None,
        latency_ms=round(sent.latency_s * 1000) if sent else 0,
        # PostgreSQL text holds no NUL: a receiver's answer with one must not fail the record.
        response_excerpt=sent.body.decode("utf-8", "replace").replace("\x00", "") if sent else "",
        error=error.replace("\x00", ""),
        succeeded=succeeded,
    )
    message.attempts = attempt
    endpoint = message.endpoint
    if succeeded:
        _settle(message, WebhookMessage.Status.SUCCEEDED, now=now)
        if endpoint is not None and endpoint.failing_since is not None:
            _endpoint_recovered(endpoint)
        return "succeeded"
    if sent is not None and sent.status == 410:  # the receiver is gone: no retry can reach it
        if endpoint is not None:
            endpoint_disable(endpoint, reason="the endpoint answered 410 Gone")
        _settle(message, WebhookMessage.Status.FAILED, now=now)
        return "failed"
    due = None
    if not final and attempt < MAX_ATTEMPTS:
        due = _retry_after(sent, now) or next_due(attempts=attempt, now=now)
    if due is None:
        _settle(message, WebhookMessage.Status.FAILED, now=now)
        if endpoint is not None and not final:
            _endpoint_failed(endpoint, now=now)
        return "failed"
    message.status, message.due_at = WebhookMessage.Status.PENDING, due
    message.save(update_fields=["attempts", "status", "due_at"])
    return "retry"


def _retry_after(sent: Sent | None, now: dt.datetime) -> dt.datetime | None:
    """429 and 503 may say when to come back (seconds or an HTTP date), held to 24 h."""
    if sent is None or sent.status not in (429, 503):
        return None
    value = sent.headers.get("retry-after", "").strip()
    if _SECONDS.match(value):
        wait = dt.timedelta(seconds=int(value))
    else:
        try:
            wait = email.utils.parsedate_to_datetime(value) - now
        except (TypeError, ValueError, OverflowError):
            return None
    return now + min(max(wait, dt.timedelta(seconds=1)), MAX_RETRY_AFTER)


def _settle(message: WebhookMessage, status: str, *, now: dt.datetime) -> None:
    message.status = status
    message.due_at = None
    message.delivered_at = now if status == WebhookMessage.Status.SUCCEEDED else None
    message.save(update_fields=["attempts", "status", "due_at", "delivered_at"])


def _endpoint_failed(endpoint: WebhookEndpoint, *, now: dt.datetime) -> None:
    """A message used up its schedule: the tenant is told once; failing for days disables."""
    endpoint.refresh_from_db()
    if endpoint.failing_since is None:
        endpoint.failing_since = now
        endpoint.save(update_fields=["failing_since", "updated_at"])
        EndpointNotice.objects.create(
            endpoint=endpoint,
            kind=EndpointNotice.Kind.FAILING,
            detail=f"A message got no 2xx answer after {MAX_ATTEMPTS} attempts.",
        )
    elif now - endpoint.failing_since >= dt.timedelta(seconds=settings.WEBHOOK_DISABLE_AFTER_S):
        days = settings.WEBHOOK_DISABLE_AFTER_S / 86400
        endpoint_disable(endpoint, reason=f"every delivery failed for {days:g} days")


def _endpoint_recovered(endpoint: WebhookEndpoint) -> None:
    endpoint.failing_since = None
    endpoint.save(update_fields=["failing_since", "updated_at"])
    EndpointNotice.objects.create(
        endpoint=endpoint, kind=EndpointNotice.Kind.RECOVERED, detail="A delivery succeeded."
    )


def endpoint_disable(endpoint: WebhookEndpoint, *, reason: str) -> None:
    """Disable an endpoint, record why, tell the tenant; its waiting messages fail."""
    changed = WebhookEndpoint.objects.filter(pk=endpoint.pk, enabled=True).update(
        enabled=False, disabled_reason=reason[:256]
    )
    if not changed:
        return
    EndpointNotice.objects.create(
        endpoint=endpoint, kind=EndpointNotice.Kind.DISABLED, detail=reason[:512]
    )
    WebhookMessage.objects.filter(endpoint=endpoint, status=WebhookMessage.Status.PENDING).update(
        status=WebhookMessage.Status.FAILED, due_at=None
    )
    logger.info("webhook endpoint %s disabled: %s", endpoint.public_id, reason)
