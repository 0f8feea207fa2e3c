"""`seed_demo`, which `make run` seeds the local stack with, run again on each start."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from jobs.services.submit import job_resolve_input
from tenants.services import api_key_authenticate

pytestmark = pytest.mark.django_db


def seed_demo() -> dict[str, str]:
    out = io.StringIO()
    call_command("seed_demo", "--model-uri", "/models/tiny", stdout=out)
    keys: dict[str, str] = json.loads(out.getvalue())
    return keys


def test_demo_key_and_the_stacks_own_key_belong_to_two_tenants_on_every_run() -> None:
    # given the demo seeded once; when it is seeded again, as each `make run` does
    seed_demo()
    keys = seed_demo()
    # then each run hands out a live key of the demo tenant and one of the stack's own tenant,
    # whose plan is its own: what the demo key spends cannot touch the stack's demo job
    demo = api_key_authenticate(plaintext=keys["demo"])
    own = api_key_authenticate(plaintext=keys["devstack"])
    assert demo is not None and own is not None
    assert (demo.tenant.name, own.tenant.name) == ("demo", "devstack")
    assert demo.tenant.plan != own.tenant.plan
    assert sorted(own.scopes) == ["jobs:read", "jobs:write"]


def test_the_demo_model_takes_512x512_with_its_default_steps_and_64x64_by_default() -> None:
    # given the seeded demo
    keys = seed_demo()
    tenant = api_key_authenticate(plaintext=keys["demo"]).tenant  # type: ignore[union-attr]
    # when a 512x512 job and one without a size are resolved for the demo tenant
    large = job_resolve_input(
        tenant=tenant, data={"model": "tiny", "prompt": "a fox", "width": 512, "height": 512}
    )
    small = job_resolve_input(tenant=tenant, data={"model": "tiny", "prompt": "a fox"})
    # then both are accepted, with the model's defaults where none were given
    assert (large.input["width"], large.input["height"], large.input["steps"]) == (512, 512, 4)
    assert (small.input["width"], small.input["height"]) == (64, 64)
