"""Tenants' webhook endpoints and signing secrets; redelivery and test events.

Every service takes the tenant explicitly: another tenant's endpoint or message is a 404.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from integrations.safe_http import FetchError, check_url
from integrations.webhooks import selectors
from integrations.webhooks.models import (
    EventType,
    JobWebhookSecret,
    RotatingSecret,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.secrets import (
    secret_decrypt,
    secret_encrypt,
    secret_new,
    secret_reencrypt,
)
from integrations.webhooks.services.dispatch import messages_dispatch
from sdsaas.errors import Conflict, InvalidInput
from tenants.models import Tenant

SUBSCRIBABLE = [t.value for t in EventType if t != EventType.TEST]
MAX_ENDPOINTS_PER_TENANT = 20


def webhook_url_check(url: str, *, field: str = "url") -> None:
    """https, or plain http to a host:port of SDSAAS_WEBHOOK_ALLOW_HOSTS; never a private
    address (checked again at every send: DNS can change after registration)."""
    try:
        check_url(url, allow_http_hosts=settings.WEBHOOK_ALLOW_HOSTS)
    except FetchError as exc:
        raise InvalidInput(field, exc.message) from None


def event_types_check(events: list[str], *, field: str = "events") -> list[str]:
    unknown = sorted(set(events) - set(SUBSCRIBABLE))
    if unknown:
        raise InvalidInput(field, f"unknown event types {unknown}; known: {SUBSCRIBABLE}")
    return [t for t in SUBSCRIBABLE if t in events]


@transaction.atomic
def endpoint_create(
    *, tenant: Tenant, url: str, events: list[str], description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its signing secret, which is shown this once."""
    if not events:
        raise InvalidInput("events", "subscribe to at least one event type")
    webhook_url_check(url)
    if WebhookEndpoint.objects.filter(tenant=tenant).count() >= MAX_ENDPOINTS_PER_TENANT:
        raise Conflict(f"A tenant may have at most {MAX_ENDPOINTS_PER_TENANT} endpoints.")
    secret = secret_new()
    endpoint = WebhookEndpoint.objects.create(
        tenant=tenant,
        url=url,
        events=event_types_check(events),
        description=description,
        secret_encrypted=secret_encrypt(secret),
    )
    return endpoint, secret


def endpoint_update(
    *,
    tenant: Tenant,
    endpoint_id: str,
    url: str | None = None,
    events: list[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change the given fields only: a disable (a 410, days of failures) or a secret rotation
    that happens meanwhile is kept."""
    endpoint = selectors.endpoint_get(tenant=tenant, public_id=endpoint_id)
    changed = ["updated_at"]
    if url is not None:
        webhook_url_check(url)
        endpoint.url = url
        changed.append("url")
    if events is not None:
        if not events:
            raise InvalidInput("events", "subscribe to at least one event type")
        endpoint.events = event_types_check(events)
        changed.append("events")
    if description is not None:
        endpoint.description = description
        changed.append("description")
    if enabled is not None:
        endpoint.enabled = enabled
        changed.append("enabled")
        if enabled:  # enabled again by the tenant: a fresh start
            endpoint.disabled_reason, endpoint.failing_since = "", None
            changed += ["disabled_reason", "failing_since"]
    endpoint.save(update_fields=changed)
    return endpoint


def endpoint_delete(*, tenant: Tenant, endpoint_id: str) -> None:
    selectors.endpoint_get(tenant=tenant, public_id=endpoint_id).delete()


@transaction.atomic
def endpoint_rotate_secret(*, tenant: Tenant, endpoint_id: str) -> tuple[WebhookEndpoint, str]:
    """A new secret, shown this once; the previous one also signs for the rotation window.
    Rotations of one endpoint take turns (row lock): each secret shown is the one stored."""
    endpoint = selectors.endpoint_get(tenant=tenant, public_id=endpoint_id)
    endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    secret = secret_rotate(endpoint, now=timezone.now())
    endpoint.save(update_fields=[*SECRET_FIELDS, "updated_at"])
    return endpoint, secret


SECRET_FIELDS = ("secret_encrypted", "previous_secret_encrypted", "previous_secret_expires_at")


def secret_rotate(row: RotatingSecret, *, now: dt.datetime) -> str:
    """A new secret in `row` (which the caller locked, and saves), shown this once; the one it
    replaces signs too for SDSAAS_WEBHOOK_ROTATION_WINDOW_S."""
    secret = secret_new()
    if row.secret_encrypted:
        row.previous_secret_encrypted = row.secret_encrypted
        row.previous_secret_expires_at = now + dt.timedelta(
            seconds=settings.WEBHOOK_ROTATION_WINDOW_S
        )
    row.secret_encrypted = secret_encrypt(secret)
    return secret


def signing_secrets(row: RotatingSecret, *, now: dt.datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous one while its window lasts."""
    secrets = [secret_decrypt(row.secret_encrypted)]
    expires = row.previous_secret_expires_at
    if row.previous_secret_encrypted and expires is not None and now < expires:
        secrets.append(secret_decrypt(row.previous_secret_encrypted))
    return secrets


def endpoint_send_test(*, tenant: Tenant, endpoint_id: str) -> WebhookMessage:
    """A `webhook.test` message to this endpoint, whatever it subscribes to."""
    endpoint = selectors.endpoint_get(tenant=tenant, public_id=endpoint_id)
    now = timezone.now()
    message = WebhookMessage.objects.create(
        tenant=tenant,
        endpoint=endpoint,
        event_type=EventType.TEST,
        data={"endpoint": endpoint.public_id, "message": "A test event from sdsaas."},
        event_at=now,
        due_at=now,
    )
    transaction.on_commit(lambda: messages_dispatch(message_ids=[message.pk]))
    return message


def message_redeliver(*, tenant: Tenant, message_id: str) -> WebhookMessage:
    """Try a settled message again now, with its `webhook-id`; a waiting one is left as it is."""
    message = selectors.message_get(tenant=tenant, public_id=message_id)
    if message.status in (WebhookMessage.Status.SUCCEEDED, WebhookMessage.Status.FAILED):
        _due_now([message.pk])
        message.refresh_from_db()
    return message


def messages_redeliver_failed(*, tenant: Tenant, endpoint_id: str, since: dt.datetime) -> int:
    """Try again every failed message of the endpoint created since `since`; how many."""
    endpoint = selectors.endpoint_get(tenant=tenant, public_id=endpoint_id)
    ids = list(
        WebhookMessage.objects.filter(
            endpoint=endpoint, status=WebhookMessage.Status.FAILED, created_at__gte=since
        ).values_list("pk", flat=True)
    )
    _due_now(ids)
    return len(ids)


def _due_now(message_ids: list[int]) -> None:
    now = timezone.now()
    WebhookMessage.objects.filter(pk__in=message_ids).update(
        status=WebhookMessage.Status.PENDING, due_at=now, delivered_at=None
    )
    transaction.on_commit(lambda: messages_dispatch(message_ids=message_ids))


def job_webhook_validate(*, tenant: Tenant, url: str) -> None:
    """A job's own `webhook` at submit: a URL we may send to, and a per-job secret to sign with."""
    webhook_url_check(url, field="webhook")
    if not JobWebhookSecret.objects.filter(tenant=tenant).exists():
        raise InvalidInput(
            "webhook", "issue a per-job webhook secret first: POST /v1/webhooks/job-secret"
        )


@transaction.atomic
def job_secret_issue(*, tenant: Tenant) -> str:
    """A new secret for the tenant's per-job webhooks, shown this once; the one it replaces signs
    too for the rotation window. Issues of one tenant take turns (row lock)."""
    row, _ = JobWebhookSecret.objects.select_for_update().get_or_create(
        tenant=tenant, defaults={"secret_encrypted": ""}
    )
    secret = secret_rotate(row, now=timezone.now())
    row.save(update_fields=list(SECRET_FIELDS))
    return secret


def job_secret_get(*, tenant: Tenant) -> JobWebhookSecret:
    """The tenant's per-job webhook secret, to sign with; InvalidInput if it issued none."""
    found = JobWebhookSecret.objects.filter(tenant=tenant).first()
    if found is None:
        raise InvalidInput(
            "webhook", "issue a per-job webhook secret first: POST /v1/webhooks/job-secret"
        )
    return found


@transaction.atomic
def secrets_reencrypt() -> int:
    """Every stored secret under the first key (the keys' rotation); how many were rewritten."""
    count = 0
    rows: list[QuerySet[WebhookEndpoint] | QuerySet[JobWebhookSecret]] = [
        WebhookEndpoint.objects.select_for_update(),
        JobWebhookSecret.objects.select_for_update(),
    ]
    for queryset in rows:
        for row in queryset:
            row.secret_encrypted = secret_reencrypt(row.secret_encrypted)
            if row.previous_secret_encrypted:
                row.previous_secret_encrypted = secret_reencrypt(row.previous_secret_encrypted)
            row.save(update_fields=["secret_encrypted", "previous_secret_encrypted"])
            count += 1
    return count
