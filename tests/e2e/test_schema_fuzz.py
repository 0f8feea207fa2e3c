"""Schema-driven fuzzing: schemathesis reads the schema the API serves and calls a real gunicorn
(sdsaas/gunicorn_conf.py) over HTTP with a real key, checking every answer against that schema.

It runs `schemathesis run`, every phase (examples, coverage, fuzzing, stateful) and every check,
as a process of its own: schemathesis's pytest loader for a schema that a fixture serves
(`schemathesis.pytest.from_fixture`) reads `Item._nodeid`, which this pytest no longer has.
`SDSAAS_FUZZ_MAX_EXAMPLES` sets the examples per operation (README, "Fuzzing the API"). Each run
draws new data; a failure prints its seed and a curl line that reproduces it. No control worker
runs, so an image URL is never fetched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.models import Family
from tenants.services import api_key_issue
from tests.support.factories import (
    DiffusionModelFactory,
    LoraFactory,
    PlanFactory,
    TenantFactory,
    UploadFactory,
)

MAX_EXAMPLES = int(os.environ.get("SDSAAS_FUZZ_MAX_EXAMPLES", "10"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
UPLOAD_ID = "upl_" + "0f" * 10

# The server shares the test database (tests/e2e/conftest.py), empty at the start of each test.
pytestmark = pytest.mark.django_db(transaction=True)

# Every check runs, as configured here and nowhere else.
CONFIG = f"""
[auth.openapi.ApiKey]
bearer = "${{SDSAAS_FUZZ_KEY}}"

# A repeated query parameter is refused (400), never read as its first or last value: send some.
[phases.coverage]
generate-duplicate-query-parameters = true

# schemathesis's own list, and 414 and 431: gunicorn refuses a request line or header fields past
# its limits (sdsaas/gunicorn_conf.py) before the API sees them, in the uniform error shape.
[checks.negative_data_rejection]
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "431", "5xx"
]

[generation]
# The API refuses NUL in every string (PostgreSQL text cannot hold it), which a schema cannot say
# of free text; with NUL allowed, a valid-looking prompt would be refused for it.
allow-x00 = false

# Values the catalog and the tenant hold: a random slug names no model, so almost no job would be
# created, and the Job answers and the links from POST /v1/jobs would go unchecked.
[dictionaries.models]
values = ["tiny"]
[dictionaries.loras]
values = ["ink"]
[dictionaries.images]
values = ["{UPLOAD_ID}", "https://images.example.com/cat.png"]

[parameters]
"body.model" = {{ dictionary = "models", probability = 0.9 }}
"body.loras[*].slug" = {{ dictionary = "loras", probability = 0.9 }}
"body.image" = {{ dictionary = "images", probability = 0.5 }}
"body.upscale_model" = {{ dictionary = "models", probability = 0.5 }}
"body.allowed_models[*]" = {{ dictionary = "models", probability = 0.9 }}

# "Schema-valid data is accepted" cannot hold where validity depends on more than the schema says:
# which models and uploads exist, rules across fields (strength needs an image; steps x strength
# reaches a step; each LoRA once; no private address literal), a cursor being one the API wrote,
# an upload's bytes being an image; a webhook URL's host resolving to public addresses only; a
# Discord public key being a point of the curve, an application being registered once. These
# operations answer such requests with a 400 naming the field (a 409 for an application registered
# already); every other check runs on them, and this one on every other operation.
[[operations]]
include-operation-id = [
    "jobs_create",
    "jobs_list",
    "uploads_create",
    "webhook_endpoints_create",
    "webhook_endpoints_list",
    "webhook_endpoints_update",
    "webhook_endpoints_deliveries",
    "discord_applications_create",
    "discord_applications_list",
    "discord_applications_update",
    "discord_guild_policies_list",
    "discord_guild_policies_put",
    "discord_guild_policies_update",
]
checks.positive_data_acceptance.enabled = false
"""


def test_fuzzing_the_served_schema_finds_nothing(served_api: str, tmp_path: Path) -> None:
    # given a tenant whose plan the fuzzing cannot exhaust, and a model and LoRA whose bounds are
    # the schema's, so that what is refused is refused for the input, not for the catalog
    plan = PlanFactory(
        monthly_credits=10**9, requests_per_minute=10**6, max_pixels=8192**2, max_steps=150
    )
    tenant = TenantFactory(plan=plan)
    DiffusionModelFactory(slug="tiny", min_side=8, max_side=8192, max_steps=150)
    LoraFactory(slug="ink", family=Family.SD15)
    UploadFactory(public_id=UPLOAD_ID, tenant=tenant, width=64, height=64)
    _, key = api_key_issue(tenant=tenant)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    # when schemathesis runs every phase and check against the schema the server serves
    argv = [str(SCHEMATHESIS), "--config-file", str(config), "--no-color", "run"]
    # No example database: nothing is written beside the tests, and each run draws anew.
    options = ["--max-examples", str(MAX_EXAMPLES), "--generation-database", "none"]
    done = subprocess.run(
        [*argv, f"{served_api}/v1/schema", *options],
        env={**os.environ, "SDSAAS_FUZZ_KEY": key},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # then it finds nothing
    assert done.returncode == 0, done.stdout + done.stderr
