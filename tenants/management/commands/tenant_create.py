from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.models import Plan, Tenant
from tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant on a plan (created with defaults if it does not exist)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--plan", default="default")

    def handle(self, *args: Any, name: str, plan: str, **options: Any) -> None:
        if Tenant.objects.filter(name=name).exists():
            raise CommandError(f"tenant {name!r} exists")
        tenant = tenant_create(name=name, plan=Plan.objects.get_or_create(name=plan)[0])
        self.stdout.write(f"created tenant {tenant.name} (id {tenant.pk}, plan {tenant.plan})")
