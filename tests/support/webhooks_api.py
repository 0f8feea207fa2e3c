"""What the webhook API tests (tests/integrations/webhooks/test_api_*.py) share: the paths, the
endpoint URLs, the scope, and endpoints and messages made as the services and the sender leave
them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from integrations.webhooks.models import EventType, WebhookAttempt, WebhookEndpoint, WebhookMessage
from integrations.webhooks.services.endpoints import endpoint_create
from jobs.models import Job
from tenants.models import Tenant

ENDPOINTS = "/v1/webhooks/endpoints"
# Public address literals: valid endpoint URLs with no DNS lookup, and nothing ever sent to them
# (no sender runs in these tests).
URL = "https://1.1.1.1/hooks"
OTHER_URL = "https://8.8.8.8/other"
MANAGE = "webhooks:manage"


def new_endpoint(tenant: Tenant, url: str = URL, events: list[str] | None = None) -> Any:
    endpoint, _ = endpoint_create(
        tenant=tenant, url=url, events=events or ["job.succeeded", "job.failed"]
    )
    return endpoint


def new_message(
    endpoint: WebhookEndpoint,
    *,
    status: str = WebhookMessage.Status.PENDING,
    attempts: list[tuple[int | None, str]] = (),  # type: ignore[assignment]
    job: Job | None = None,
    created_at: dt.datetime | None = None,
) -> WebhookMessage:
    """A message as the sender leaves it, with one attempt per (status code, error)."""
    now = timezone.now()
    settled = status in (WebhookMessage.Status.SUCCEEDED, WebhookMessage.Status.FAILED)
    message = WebhookMessage.objects.create(
        tenant=endpoint.tenant,
        endpoint=endpoint,
        job=job,
        event_type=EventType.JOB_SUCCEEDED if job else EventType.TEST,
        event_at=now,
        status=status,
        attempts=len(attempts),
        due_at=None if settled else now + dt.timedelta(minutes=5),
        delivered_at=now if status == WebhookMessage.Status.SUCCEEDED else None,
    )
    for number, (code, error) in enumerate(attempts, start=1):
        WebhookAttempt.objects.create(
            message=message,
            number=number,
            started_at=now,
            status_code=code,
            latency_ms=10 * number,
            response_excerpt=f"answer {number}" if code else "",
            error=error,
            succeeded=code is not None and 200 <= code < 300,
        )
    if created_at is not None:  # auto_now_add: only an update sets another time
        WebhookMessage.objects.filter(pk=message.pk).update(created_at=created_at)
        message.refresh_from_db()
    return message


def create_body(**fields: Any) -> dict[str, Any]:
    return {"url": URL, "events": ["job.succeeded"], **fields}
