"""Encrypt every stored webhook secret again under the first of SDSAAS_WEBHOOK_SECRET_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from integrations.webhooks.services.endpoints import secrets_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt webhook signing secrets under the first key (after adding a new key)."

    def handle(self, *args: Any, **options: Any) -> None:
        count = secrets_reencrypt()
        self.stdout.write(f"re-encrypted {count} secrets")
