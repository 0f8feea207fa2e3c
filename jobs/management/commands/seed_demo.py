from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.models import DiffusionModel, Family
from tenants.models import Plan, Tenant
from tenants.services import api_key_issue, tenant_create


class Command(BaseCommand):
    help = "Create the demo tenant and the tiny model in the catalog; print a new demo API key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model-uri", required=True, help="where the tiny model lives")

    def handle(self, *args: Any, model_uri: str, **options: Any) -> None:
        tenant = Tenant.objects.filter(name="demo").first()
        if tenant is None:
            plan, _ = Plan.objects.get_or_create(
                name="demo", defaults={"monthly_credits": 10_000, "max_concurrent_jobs": 2}
            )
            tenant = tenant_create(name="demo", plan=plan)
        DiffusionModel.objects.update_or_create(
            slug="tiny",
            defaults={
                "name": "Tiny test model (random weights)",
                "family": Family.SD15,
                "source_uri": model_uri,
                "revision": "tiny-1",
                "default_width": 64,
                "default_height": 64,
                "default_steps": 4,
                "min_side": 32,
                "max_side": 256,
            },
        )
        _, plaintext = api_key_issue(tenant=tenant, name="make run")
        self.stdout.write(plaintext)
