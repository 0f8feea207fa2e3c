"""The world of the job-input validation tests (tests/jobs/test_validation_*.py): a roomy plan,
a model with bounds of its own, six LoRAs, and the checks that a refusal names its field and
leaves nothing behind.

The fixtures are registered under the names the tests use (`tenant`, `model`, `client`,
`loras`), in place of the suite-wide ones of tests/conftest.py, in the modules that import them.
A module imports the first three together (`client` takes the `tenant` and `model` of the test's
module), and `validation_loras` where it needs `loras`; the redundant alias marks the import as
used:

    from tests.support.validation import validation_client as validation_client
    from tests.support.validation import validation_model as validation_model
    from tests.support.validation import validation_tenant as validation_tenant
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from rest_framework.response import Response
from rest_framework.test import APIClient

from jobs.models import DiffusionModel, Family, IdempotencyRecord, Job, JobEvent
from tenants.models import CreditPeriod, Tenant
from tests.support.api import assert_error
from tests.support.factories import (
    DiffusionModelFactory,
    LoraFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)

HTTPS_IMAGE = "https://images.example.com/cat.png"
SEED_MAX = 2**32 - 1


@pytest.fixture(name="tenant")
def validation_tenant() -> Tenant:
    """A roomy plan, so that only the model's bounds and the static ones apply."""
    plan = PlanFactory(max_steps=150, max_pixels=1024 * 1024, max_concurrent_jobs=2)
    return TenantFactory(plan=plan)  # type: ignore[no-any-return]


@pytest.fixture(name="model")
def validation_model() -> DiffusionModel:
    return DiffusionModelFactory(  # type: ignore[no-any-return]
        slug="tiny",
        family=Family.SD15,
        min_side=256,
        max_side=1024,
        max_steps=100,
        default_width=512,
        default_height=512,
        default_steps=20,
        default_guidance=7.5,
        default_scheduler="dpmpp_2m",
    )


@pytest.fixture(name="client")
def validation_client(tenant: Tenant, model: DiffusionModel) -> APIClient:
    return api_client_for(tenant)


@pytest.fixture(name="loras")
def validation_loras() -> list[str]:
    return [LoraFactory(slug=f"style-{i}", family=Family.SD15).slug for i in range(6)]


def submit(client: APIClient, **fields: Any) -> Response:
    body = {"model": "tiny", "prompt": "a paper boat", **fields}
    return client.post("/v1/jobs", body, format="json")  # type: ignore[no-any-return]


def post_raw(client: APIClient, body: str | bytes, content_type: str) -> Response:
    return client.generic("POST", "/v1/jobs", body, content_type=content_type)  # type: ignore[no-any-return]


def assert_400_naming(response: Response, field: str) -> None:
    """A 400 in the one error shape whose message starts with the field's path."""
    assert_error(response, 400, "invalid_input")
    error = response.json()["error"]
    assert error["message"].startswith(f"{field}: "), error
    top = re.split(r"[.\[]", field)[0]
    assert any(key == field or re.split(r"[.\[]", key)[0] == top for key in error["details"]), error


def nothing_created() -> bool:
    return not (
        Job.objects.exists()
        or JobEvent.objects.exists()
        or IdempotencyRecord.objects.exists()
        or CreditPeriod.objects.filter(reserved__gt=0).exists()
    )
