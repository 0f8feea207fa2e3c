"""Signing secrets: stored encrypted with keys of our own, which rotate without downtime."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import call_command

from integrations.webhooks.models import WebhookEndpoint
from integrations.webhooks.secrets import secret_decrypt
from integrations.webhooks.services.endpoints import endpoint_create, job_secret, job_secret_issue
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
    assert job_secret(tenant=tenant) == secret
    # and after re-encryption the old key can go
    call_command("webhook_secrets_reencrypt")
    settings.WEBHOOK_SECRET_KEYS = [new_key]
    assert job_secret(tenant=tenant) == secret
