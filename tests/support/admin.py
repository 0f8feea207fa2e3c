"""The Django admin's test world, shared by the admin tests of each app (tests/*/test_admin.py):
one object of each registered model, jobs in each state the pages show, and a staff client.

The fixtures `world` and `staff` reach those tests through their folder's conftest.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.db.models import Model
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from integrations.discord.models import DiscordApplication, DiscordReply
from integrations.discord.services.applications import application_create
from integrations.discord.tokens import token_encrypt
from integrations.webhooks.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from integrations.webhooks.services.endpoints import endpoint_create
from jobs.models import DiffusionModel, Job, LoraAdapter, Upload
from jobs.services.lifecycle import job_mark_succeeded
from jobs.services.submit import job_submit
from tenants.models import ApiKey, CreditPeriod, Plan, Tenant, UsageRecord
from tenants.services import api_key_issue
from tests.support.aws import LocalAws
from tests.support.factories import (
    DiffusionModelFactory,
    LoraFactory,
    PlanFactory,
    TenantFactory,
    UploadFactory,
)


@dataclass
class World:
    """One object of each registered model, and jobs in each state the pages show."""

    admin_user: User
    tenant: Tenant
    key: ApiKey
    succeeded: Job  # with outputs, usage records and events
    starting: Job
    queued: Job
    objects: dict[type[Model], Model]


@pytest.fixture
def world(admin_user: User) -> World:
    # A cap of one concurrent job: the second live job waits as `queued`.
    plan = PlanFactory(max_concurrent_jobs=1)
    tenant = TenantFactory(plan=plan)
    key, _ = api_key_issue(tenant=tenant, name="ci")
    model = DiffusionModelFactory(slug="tiny")
    lora = LoraFactory()
    upload = UploadFactory(
        tenant=tenant,
        storage_key=f"tenants/{tenant.pk}/uploads/x.png",
        width=64,
        height=48,
        size_bytes=139,
    )
    data = {"model": "tiny", "prompt": "a red fox", "loras": [{"slug": lora.slug}]}
    succeeded, _ = job_submit(tenant=tenant, data=data)
    assert job_mark_succeeded(
        job_public_id=succeeded.public_id,
        attempt=1,
        output_keys=[f"tenants/{tenant.pk}/jobs/{succeeded.public_id}/0.png"],
        metrics={"inference_s": 1.5},
    )
    starting, _ = job_submit(tenant=tenant, data={**data, "image": upload.public_id})
    queued, _ = job_submit(tenant=tenant, data=data)
    assert (starting.status, queued.status) == ("starting", "queued")
    succeeded.refresh_from_db()
    group = Group.objects.create(name="support")
    endpoint, message = webhook_endpoint_with_message(tenant, succeeded)
    application, reply = discord_application_with_reply(tenant, succeeded)
    objects: dict[type[Model], Model] = {
        Plan: plan,
        Tenant: tenant,
        ApiKey: key,
        CreditPeriod: CreditPeriod.objects.get(tenant=tenant),
        UsageRecord: UsageRecord.objects.get(job=succeeded),
        DiffusionModel: model,
        LoraAdapter: lora,
        Upload: upload,
        Job: succeeded,
        User: admin_user,
        Group: group,
        WebhookEndpoint: endpoint,
        WebhookMessage: message,
        DiscordApplication: application,
        DiscordReply: reply,
    }
    return World(admin_user, tenant, key, succeeded, starting, queued, objects)


def webhook_endpoint_with_message(
    tenant: Tenant, job: Job
) -> tuple[WebhookEndpoint, WebhookMessage]:
    """An endpoint (a public address literal: no DNS lookup) with a failed message of the job."""
    endpoint, _ = endpoint_create(tenant=tenant, url="https://1.1.1.1/hooks", events=["job.failed"])
    now = timezone.now()
    message = WebhookMessage.objects.create(
        tenant=tenant,
        endpoint=endpoint,
        job=job,
        event_type="job.failed",
        event_at=now,
        status="failed",
        attempts=1,
    )
    WebhookAttempt.objects.create(message=message, number=1, started_at=now, status_code=500)
    return endpoint, message


_discord_ids = itertools.count(1_100_000_000_000_000_000)


def discord_application_with_reply(
    tenant: Tenant, job: Job
) -> tuple[DiscordApplication, DiscordReply]:
    """A Discord application (a real Ed25519 key) with the reply that follows the job."""
    application = application_create(
        tenant=tenant,
        application_id=str(next(_discord_ids)),
        public_key=SigningKey.generate().verify_key.encode(HexEncoder).decode(),
        bot_token="bot-token-of-the-admin-world",
    )
    now = timezone.now()
    reply = DiscordReply.objects.create(
        application=application,
        job=job,
        interaction_id=str(next(_discord_ids)),
        token_encrypted=token_encrypt("interaction-token"),
        token_expires_at=now,
        guild_id=str(next(_discord_ids)),
        channel_id=str(next(_discord_ids)),
        user_id=str(next(_discord_ids)),
        changed_at=now,
    )
    return application, reply


@pytest.fixture
def staff(world: World, local_aws: LocalAws) -> Client:
    # With the local S3: the job page signs image links, which needs credentials and a bucket.
    client = Client()
    client.force_login(world.admin_user)
    return client


def admin_url(model: type[Model], page: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{page}", args=args)


def admin_permits(model: type[Model], user: User, action: str) -> bool:
    """Whether the model's admin lets `user` "add" or "delete" (any of) its objects."""
    request = RequestFactory().get("/admin/")
    request.user = user
    return bool(getattr(admin.site._registry[model], f"has_{action}_permission")(request))


def page_messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]
