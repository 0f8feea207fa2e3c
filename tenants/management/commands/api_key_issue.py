from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sdsaas.errors import ServiceError
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_issue


class Command(BaseCommand):
    help = "Issue an API key for a tenant and print it once (only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="tenant name")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            help=f"repeatable; default all of {', '.join(ApiKey.Scope.values)}",
        )
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, tenant: str, scopes: list[str] | None, **options: Any) -> None:
        found = Tenant.objects.filter(name=tenant).first()
        if found is None:
            raise CommandError(f"no tenant {tenant!r}")
        try:
            _, plaintext = api_key_issue(tenant=found, scopes=scopes, name=options["name"])
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(plaintext)
