"""Encrypt every stored Discord token again under the first of SDSAAS_DISCORD_TOKEN_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from integrations.discord.services.applications import tokens_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt Discord bot and interaction tokens under the first key (after adding one)."

    def handle(self, *args: Any, **options: Any) -> None:
        count = tokens_reencrypt()
        self.stdout.write(f"re-encrypted {count} tokens")
