"""The soak's own local stack (bench/stack.py's pieces, with beat), its workers and tenants."""

from __future__ import annotations

import argparse
import os
import time

from bench.soak.workers import Run, Slot
from bench.stack import ONE_THREAD, Home, stack_env, start_control_plane, wait_api
from sdsaas import devstack


def span(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def soak_env(args: argparse.Namespace, home: Home) -> tuple[dict[str, str], str]:
    """The stack's environment (in `home`, its own queues), and which database it uses."""
    return stack_env(home, prefix="soak", SDSAAS_SQS_VISIBILITY_TIMEOUT=str(args.visibility))


def start_stack(
    args: argparse.Namespace, stack: devstack.Stack, home: Home
) -> tuple[list[Slot], dict[str, str]]:
    """Every process of the stack, up and answering: the GPU worker slots, and the API key of
    each of the soak's tenants by tenant name."""
    start_control_plane(stack, home, scheduler=True)
    keys = create_tenants(args)
    runs: list[Run] = []
    slots = [Slot(f"gpu-{chr(97 + i)}", ONE_THREAD, runs) for i in range(args.workers)]
    for slot in slots:
        slot.start(stack)
    wait_api(stack, home)
    return slots, keys


def create_tenants(args: argparse.Namespace) -> dict[str, str]:
    """Tenants of this run, on a plan that never refuses the soak: its key per tenant name."""
    from tenants.models import Plan
    from tenants.services import api_key_issue, tenant_create

    run = f"soak-{int(time.time())}-{os.getpid()}"
    plan = Plan.objects.create(
        name=run,
        monthly_credits=args.jobs * span(args.outputs)[1] * 2,
        max_concurrent_jobs=args.concurrency,
        requests_per_minute=100_000,
        max_steps=max(50, span(args.steps)[1]),
    )
    keys = {}
    for i in range(args.tenants):
        tenant = tenant_create(name=f"{run}-t{i}", plan=plan)
        keys[tenant.name] = api_key_issue(tenant=tenant, name="soak")[1]
    return keys
