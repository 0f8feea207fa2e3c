"""The lifecycle's announcements (jobs/announcements.py) become webhook messages.

`on_job_state_change` is a subscriber (settings.JOB_STATE_SUBSCRIBERS): it runs inside the
transaction that changed the job, so a message exists exactly when its change committed. It only
writes rows; the messages are handed to the webhooks queue after commit.
"""

from __future__ import annotations

import logging

from django.db import transaction

from integrations.webhooks.models import EventType, WebhookEndpoint, WebhookMessage
from integrations.webhooks.services.dispatch import messages_dispatch
from jobs.announcements import JobStateChange
from jobs.models import Job

logger = logging.getLogger(__name__)


def on_job_state_change(change: JobStateChange) -> None:
    """One message per subscribed endpoint, and one for the job's own webhook if it wants it."""
    event_type = EventType(change.event_type)
    messages = [
        WebhookMessage(
            tenant_id=change.tenant_id,
            endpoint=endpoint,
            job_id=change.job_pk,
            event_type=event_type,
            event_at=change.at,
            due_at=change.at,
        )
        for endpoint in _subscribed_endpoints(change, event_type)
    ]
    job_webhook = _job_webhook(change, event_type)
    if job_webhook:
        messages.append(
            WebhookMessage(
                tenant_id=change.tenant_id,
                job_url=job_webhook,
                job_id=change.job_pk,
                event_type=event_type,
                event_at=change.at,
                due_at=change.at,
            )
        )
    if not messages:
        return
    created = WebhookMessage.objects.bulk_create(messages)
    ids = [message.pk for message in created]
    transaction.on_commit(lambda: _hand_over(ids))


def _subscribed_endpoints(change: JobStateChange, event_type: EventType) -> list[WebhookEndpoint]:
    endpoints = [
        endpoint
        for endpoint in WebhookEndpoint.objects.filter(tenant_id=change.tenant_id, enabled=True)
        if event_type in endpoint.events
    ]
    if event_type != EventType.JOB_PROGRESS:
        return endpoints
    # Progress is coalesced: at most one message per job and endpoint waits or is in flight;
    # it carries the job as it is when it is sent, so the latest progress.
    waiting = set(
        WebhookMessage.objects.filter(
            job_id=change.job_pk,
            event_type=EventType.JOB_PROGRESS,
            status__in=[WebhookMessage.Status.PENDING, WebhookMessage.Status.SENDING],
        ).values_list("endpoint_id", flat=True)
    )
    return [endpoint for endpoint in endpoints if endpoint.pk not in waiting]


def _job_webhook(change: JobStateChange, event_type: EventType) -> str:
    """The job's own `webhook` URL, if it asked for this event type (none: every type)."""
    job = Job.objects.filter(pk=change.job_pk).values("webhook_url", "webhook_events").first()
    if not job or not job["webhook_url"]:
        return ""
    wanted = job["webhook_events"] or [t.value for t in EventType if t != EventType.TEST]
    if event_type not in wanted:
        return ""
    if (
        event_type == EventType.JOB_PROGRESS
        and WebhookMessage.objects.filter(
            job_id=change.job_pk,
            endpoint__isnull=True,
            event_type=EventType.JOB_PROGRESS,
            status__in=[WebhookMessage.Status.PENDING, WebhookMessage.Status.SENDING],
        ).exists()
    ):
        return ""
    return str(job["webhook_url"])


def _hand_over(message_ids: list[int]) -> None:
    """Send new messages now rather than at the next sweep (which would send them too)."""
    try:
        messages_dispatch(message_ids=message_ids)
    except Exception as exc:  # the job's change committed; the sweep sends them
        logger.warning("could not dispatch new webhook messages now: %s", exc)
