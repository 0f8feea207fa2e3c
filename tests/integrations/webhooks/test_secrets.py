"""Signing secrets: stored encrypted with keys of our own, which rotate without downtime."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import call_command
from django.utils import timezone

from integrations.webhooks.models import WebhookEndpoint
from integrations.webhooks.secrets import secret_decrypt
from integrations.webhooks.services.endpoints import (
    endpoint_create,
    job_secret_get,
    job_secret_issue,
    signing_secrets,
)
from tests.support.factories import TenantFactory

pytestmark = pytest.mark.django_db


def test_a_secret_is_stored_encrypted_never_in_clear(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_HOSTS = frozenset({"127.0.0.1:9"})
    endpoint, secret = endpoint_create(
        tenant=TenantFactory(), url="http://127.0.0.1:9/hook", events=["job.succeeded"]
    )
    assert secret.startswith("whsec_") and len(secret) >= len("whsec_") + 43  # 32 bytes
    stored = WebhookEndpoint.objects.get(pk=endpoint.pk).secret_encrypted
    assert secret not in stored and secret_decrypt(stored) == secret
    # and only the configured keys open it
    with pytest.raises(InvalidToken):
        Fernet(Fernet.generate_key()).decrypt(stored.encode())
    assert Fernet(settings.WEBHOOK_SECRET_KEYS[0]).decrypt(stored.encode()).decode() == secret


def test_the_keys_rotate_without_downtime(settings: Any) -> None:
    # given secrets stored under the old key
    old_key = settings.WEBHOOK_SECRET_KEYS[0]
    tenant = TenantFactory()
    secret = job_secret_issue(tenant=tenant)
    # when a new key is put first, the old one kept: the secrets still decrypt
    new_key = Fernet.generate_key().decode()
    settings.WEBHOOK_SECRET_KEYS = [new_key, old_key]
    assert signing_secrets(job_secret_get(tenant=tenant), now=timezone.now()) == [secret]
    # and after re-encryption the old key can go
    call_command("webhook_secrets_reencrypt")
    settings.WEBHOOK_SECRET_KEYS = [new_key]
    assert signing_secrets(job_secret_get(tenant=tenant), now=timezone.now()) == [secret]


def test_a_reissued_per_job_secret_signs_beside_the_old_one_for_the_rotation_window(
    settings: Any,
) -> None:
    # given a tenant's per-job webhook secret
    tenant = TenantFactory()
    first = job_secret_issue(tenant=tenant)
    now = timezone.now()
    assert signing_secrets(job_secret_get(tenant=tenant), now=now) == [first]
    # when it issues a new one
    second = job_secret_issue(tenant=tenant)
    # then both sign until the window ends (receivers switch without a failed delivery), then
    # the new one alone
    row = job_secret_get(tenant=tenant)
    assert second != first
    assert signing_secrets(row, now=now) == [second, first]
    window = dt.timedelta(seconds=settings.WEBHOOK_ROTATION_WINDOW_S)
    assert signing_secrets(row, now=now + window + dt.timedelta(minutes=1)) == [second]
    assert first not in row.previous_secret_encrypted
