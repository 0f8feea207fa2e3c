from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from integrations.discord.client import discord_client
from integrations.discord.models import DiscordApplication, DiscordReply
from integrations.discord.tokens import token_encrypt
from jobs.models import Job
from tenants.models import Tenant
from tests.support.discord import DiscordApp, body_of
from tests.support.discord_api import FakeDiscord
from tests.support.factories import JobFactory

Post = Callable[..., Any]


@pytest.fixture
def discord_app() -> DiscordApp:
    return DiscordApp()


@pytest.fixture
def application(tenant: Tenant, model: Any, discord_app: DiscordApp) -> DiscordApplication:
    return discord_app.register(tenant)


@pytest.fixture
def post(application: DiscordApplication, discord_app: DiscordApp) -> Post:
    """POST an interaction signed by `app` (the application's own by default) to an endpoint."""
    http = Client()

    def send(
        payload: dict[str, Any],
        *,
        app: DiscordApp | None = None,
        to: DiscordApplication | None = None,
        timestamp: int | None = None,
    ) -> Any:
        body = body_of(payload)
        headers = (app or discord_app).headers(body, timestamp=timestamp)
        return http.post(
            f"/v1/discord/interactions/{(to or application).public_id}",
            body,
            content_type="application/json",
            headers={k: v for k, v in headers.items() if k != "Content-Type"},
        )

    return send


@pytest.fixture
def fake_discord(settings: Any) -> Iterator[FakeDiscord]:
    discord_client.cache_clear()  # no rate-limit state from another test
    with FakeDiscord() as fake:
        settings.DISCORD_API_BASE = fake.api_base
        yield fake


def result_of(application: DiscordApplication, *, user_id: str, **fields: Any) -> Job:
    """A succeeded job made from Discord by `user_id`, with its reply done."""
    job: Job = JobFactory(
        tenant=application.tenant,
        status=Job.Status.SUCCEEDED,
        output_keys=[f"tenants/{application.tenant_id}/jobs/x/0.png"],
        origin={"type": "discord", "user_id": user_id},
        **fields,
    )
    DiscordReply.objects.create(
        application=application,
        job=job,
        interaction_id="1",
        token_encrypted=token_encrypt("t"),
        token_expires_at=timezone.now(),
        guild_id="111111111111111111",
        channel_id="222222222222222222",
        user_id=user_id,
        message_id="999999999999999999",
        changed_at=timezone.now(),
        done=True,
    )
    return job
