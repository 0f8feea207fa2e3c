"""Register our slash commands with Discord for one application, or for every one."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.discord import selectors
from integrations.discord.client import DiscordError
from integrations.discord.models import DiscordApplication
from integrations.discord.services.applications import commands_register


class Command(BaseCommand):
    help = (
        "Register the slash commands with Discord (replacing the application's global commands); "
        "one line per application. Exits non-zero if any failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--application",
            metavar="dapp_…",
            help="The application's id here; every application when omitted.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        public_id: str | None = options["application"]
        if public_id is not None:
            application = selectors.application_by_public_id(public_id)
            if application is None:
                raise CommandError(f"No Discord application {public_id}.")
            applications = [application]
        else:
            applications = list(DiscordApplication.objects.select_related("tenant").order_by("id"))
        failed = 0
        for application in applications:
            name = f"{application.public_id} (Discord {application.application_id})"
            try:
                registered = commands_register(
                    tenant=application.tenant, public_id=application.public_id
                )
            except DiscordError as exc:
                # The client's messages name the route with any token redacted.
                failed += 1
                retry = " (retryable)" if exc.retryable else ""
                self.stdout.write(f"{name}: failed{retry}: {exc}")
                continue
            self.stdout.write(f"{name}: {registered.commands} command(s) registered")
        if failed:
            raise CommandError(f"{failed} of {len(applications)} application(s) failed.")
        if not applications:
            self.stdout.write("no Discord applications")
