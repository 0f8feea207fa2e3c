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
    targets: list[tuple[WebhookEndpoint | None, str]] = [
        (endpoint, "") for endpoint in _subscribed_endpoints(change, event_type)
    ]
    job_webhook = _job_webhook(change, event_type)
    if job_webhook:
        targets.append((None, job_webhook))
    # Progress is coalesced: at most one message per job and target waits or is in flight; it
    # carries the job as it is when it is sent, so the latest progress.
    if event_type == EventType.JOB_PROGRESS:
        waiting = _waiting_progress(change.job_pk)
        targets = [(e, url) for e, url in targets if (e.pk if e else None, url) not in waiting]
    if not targets:
        return
    created = WebhookMessage.objects.bulk_create(
        WebhookMessage(
            tenant_id=change.tenant_id,
            endpoint=endpoint,
            job_url=job_url,
            job_id=change.job_pk,
            event_type=event_type,
            event_at=change.at,
            due_at=change.at,
        )
        for endpoint, job_url in targets
    )
    ids = [message.pk for message in created]
    transaction.on_commit(lambda: _hand_over(ids))


def _subscribed_endpoints(change: JobStateChange, event_type: EventType) -> list[WebhookEndpoint]:
    endpoints = WebhookEndpoint.objects.filter(tenant_id=change.tenant_id, enabled=True)
    return [endpoint for endpoint in endpoints if event_type in endpoint.events]


def _waiting_progress(job_pk: int) -> set[tuple[int | None, str]]:
    """(endpoint id, per-job URL) of the job's progress messages not yet settled."""
    return set(
        WebhookMessage.objects.filter(
            job_id=job_pk,
            event_type=EventType.JOB_PROGRESS,
            status__in=[WebhookMessage.Status.PENDING, WebhookMessage.Status.SENDING],
        ).values_list("endpoint_id", "job_url")
    )


def _job_webhook(change: JobStateChange, event_type: EventType) -> str:
    """The job's own `webhook` URL, if it asked for this event type (none: every type)."""
    job = Job.objects.filter(pk=change.job_pk).values("webhook_url", "webhook_events").first()
    if not job or not job["webhook_url"]:
        return ""
    wanted = job["webhook_events"] or [t.value for t in EventType if t != EventType.TEST]
    return str(job["webhook_url"]) if event_type in wanted else ""


def _hand_over(message_ids: list[int]) -> None:
    """Send new messages now rather than at the next sweep (which would send them too)."""
    try:
        messages_dispatch(message_ids=message_ids)
    except Exception as exc:  # the job's change committed; the sweep sends them
        logger.warning("could not dispatch new webhook messages now: %s", exc)
