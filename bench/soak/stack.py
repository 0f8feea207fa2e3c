"""The soak's own local stack: its environment, its processes and its tenants."""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

from bench.soak.workers import Run, Slot
from sdsaas import devstack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def span(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def soak_env(
    args: argparse.Namespace, home: Path, *, aws_port: int, base: str
) -> tuple[dict[str, str], str]:
    """The stack's environment (in `home`, its own queues), and which database it uses."""
    env = {
        **devstack.local_env(aws=f"http://127.0.0.1:{aws_port}", base=base),
        "SDSAAS_SQS_QUEUE_PREFIX": "soak",
        "SDSAAS_SQS_VISIBILITY_TIMEOUT": str(args.visibility),
        "SDSAAS_MODEL_CACHE_DIR": str(home / "model-cache"),
    }
    database = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "own SQLite file"
    env.setdefault("DATABASE_URL", f"sqlite:///{home / 'soak.sqlite3'}")
    return env, database


def start_stack(
    args: argparse.Namespace, stack: devstack.Stack, home: Path, *, aws_port: int, api_port: int
) -> tuple[list[Slot], dict[str, str]]:
    """Every process of the stack, up and answering: the GPU worker slots, and the API key of
    each of the soak's tenants by tenant name."""
    devstack.start_aws(stack, port=aws_port)
    devstack.prepare_database(stack, tiny=devstack.ROOT / "var" / "models" / "tiny")
    import django

    django.setup()
    keys = create_tenants(args)
    devstack.start_api(stack, port=api_port)
    devstack.start_control_worker(stack)
    devstack.start_scheduler(stack, schedule=home / "celerybeat-schedule")
    # One CPU thread per worker: each stands for one GPU, and two workers with a thread per
    # core each fight over the cores (a 512x512 job took 20x longer in a trial).
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs: list[Run] = []
    slots = [Slot(f"gpu-{chr(97 + i)}", one_thread, runs) for i in range(args.workers)]
    for slot in slots:
        slot.start(stack)
    devstack.wait_http(f"http://127.0.0.1:{api_port}/healthz", 90, stack)
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
