from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.models import DiffusionModel, Family
from tenants.models import ApiKey, Plan, Tenant
from tenants.services import api_key_issue, tenant_create

# `make run`'s own demo job is submitted as a tenant of its own, on a plan of its own: nothing
# done with the demo key it hands out (a spent rate limit, spent credits, a backlog of queued
# jobs ahead in the tenant's admission order) can refuse or hold up the demo of the next run.
# A run takes seconds and writes once, so it can never reach these limits itself.
OWN_TENANT = "devstack"
OWN_PLAN = {"monthly_credits": 100_000, "max_concurrent_jobs": 1, "requests_per_minute": 60}


def _tenant(name: str, plan: dict[str, int]) -> Tenant:
    tenant = Tenant.objects.filter(name=name).first()
    if tenant is None:
        tenant = tenant_create(
            name=name, plan=Plan.objects.get_or_create(name=name, defaults=plan)[0]
        )
    return tenant


class Command(BaseCommand):
    help = (
        "Create the demo tenant, the local stack's own tenant and the tiny model in the catalog; "
        'print a new API key of each as JSON: {"demo": "sk_live_...", "devstack": "sk_live_..."}.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model-uri", required=True, help="where the tiny model lives")

    def handle(self, *args: Any, model_uri: str, **options: Any) -> None:
        demo = _tenant("demo", {"monthly_credits": 10_000, "max_concurrent_jobs": 2})
        own = _tenant(OWN_TENANT, OWN_PLAN)
        DiffusionModel.objects.update_or_create(
            slug="tiny",
            defaults={
                "name": "Tiny test model (random weights)",
                "family": Family.SD15,
                "source_uri": model_uri,
                # tiny-2 is the builder's slim shape (tiny-1 could not render 512x512 in
                # minutes): the same seed gives other pixels, so images record another revision.
                "revision": "tiny-2",
                # Small by default, so that a job is done in a blink; up to SD 1.5's native
                # 512x512, which the tiny model renders in under a second on two CPU cores.
                "default_width": 64,
                "default_height": 64,
                "default_steps": 4,
                "min_side": 32,
                "max_side": 512,
            },
        )
        _, demo_key = api_key_issue(tenant=demo, name="make run")
        _, own_key = api_key_issue(
            tenant=own, scopes=[ApiKey.Scope.JOBS_READ, ApiKey.Scope.JOBS_WRITE], name="make run"
        )
        self.stdout.write(json.dumps({"demo": demo_key, OWN_TENANT: own_key}))
