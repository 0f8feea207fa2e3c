"""Webhook tests' shared steps: a verifying receiver the sender may reach, jobs that run, and the
scheduler's sweep at a time the test chooses."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from integrations.webhooks.models import WebhookMessage
from integrations.webhooks.services.delivery import message_deliver
from integrations.webhooks.services.dispatch import messages_dispatch
from integrations.webhooks.services.endpoints import endpoint_create
from jobs.models import Job
from jobs.services import lifecycle
from tests.support.factories import PlanFactory, TenantFactory, api_client_for
from tests.support.images import image_bytes
from tests.support.webhook_receiver import Receiver


def submit(tenant: Any, **extra: Any) -> Job:
    body = {"model": "tiny", "prompt": "a fox", **extra}
    response = api_client_for(tenant).post("/v1/jobs", body, format="json")
    assert response.status_code == 202, response.json()
    return Job.objects.get(public_id=response.json()["id"])


def succeed(job: Job) -> list[str]:
    """The job runs on a worker that stores one real image; the events as the worker sends them."""
    key = f"tenants/{job.tenant_id}/jobs/{job.public_id}/0.png"
    default_storage.save(key, ContentFile(image_bytes("PNG")))
    lifecycle.job_mark_received(job_public_id=job.public_id, attempt=1)
    lifecycle.job_mark_started(job_public_id=job.public_id, attempt=1, load_s=0.1)
    lifecycle.job_mark_succeeded(
        job_public_id=job.public_id, attempt=1, output_keys=[key], metrics={}
    )
    return [key]


def run_due(now: dt.datetime) -> list[str]:
    """The scheduler's sweep at `now`, and the senders' work on what it handed over."""
    messages_dispatch(now=now)
    sending = WebhookMessage.objects.filter(status=WebhookMessage.Status.SENDING)
    return [message_deliver(message_pk=pk, now=now) for pk in sending.values_list("pk", flat=True)]


def tenant_with_endpoint(receiver: Receiver, events: list[str], path: str = "/hook") -> Any:
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=10))
    endpoint, secret = endpoint_create(tenant=tenant, url=receiver.url(path), events=events)
    receiver.secrets.append(secret)
    return tenant, endpoint
