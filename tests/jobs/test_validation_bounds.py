"""Job input at the edge: each field's range, the last value accepted and the first refused;
the model's and the plan's caps."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import Job
from sdsaas.contract import OutputFormat, Scheduler
from tests.support.factories import (
    DiffusionModelFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)
from tests.support.validation import SEED_MAX, assert_400_naming, nothing_created, submit

# The fixtures `tenant`, `model` and `client` of the validation tests:
from tests.support.validation import validation_client as validation_client
from tests.support.validation import validation_model as validation_model
from tests.support.validation import validation_tenant as validation_tenant

pytestmark = pytest.mark.django_db


ACCEPTED = [
    ("prompt", "p" * 2000),
    ("prompt", " a prompt with spaces kept "),
    ("negative_prompt", "n" * 2000),
    ("negative_prompt", ""),
    ("width", 256),
    ("width", 1024),
    ("width", 520),
    ("height", 256),
    ("height", 1024),
    ("steps", 1),
    ("steps", 100),
    ("guidance", 0),
    ("guidance", 30),
    ("guidance", 12.25),
    ("num_outputs", 1),
    ("num_outputs", 4),
    ("seed", 0),
    ("seed", SEED_MAX),
    *[("scheduler", name.value) for name in Scheduler],
    *[("output_format", name.value) for name in OutputFormat],
]


@pytest.mark.parametrize(("field", "value"), ACCEPTED, ids=lambda v: str(v)[:20])
def test_values_at_the_bounds_are_accepted_as_given(
    client: APIClient, field: str, value: Any
) -> None:
    # when a job is submitted with a value at the edge of its range
    response = submit(client, **{field: value})
    # then it is accepted and the value is used as given (0 is not replaced by a default)
    assert response.status_code == 202, response.content
    assert response.json()["input"][field] == value
    assert Job.objects.get().input[field] == value


REFUSED = [
    ("prompt", "p" * 2001),
    ("prompt", ""),
    ("negative_prompt", "n" * 2001),
    ("width", 252),  # not a multiple of 8
    ("width", 516),
    ("width", 248),  # below the model's min_side
    ("width", 1032),  # above the model's max_side
    ("width", 0),
    ("width", -512),
    ("width", 8200),
    ("height", 260),
    ("height", 248),
    ("height", 1032),
    ("height", 0),
    ("steps", 0),
    ("steps", -1),
    ("steps", 101),  # above the model's max_steps
    ("steps", 151),  # above the ceiling
    ("guidance", -0.01),
    ("guidance", 30.01),
    ("num_outputs", 0),
    ("num_outputs", 5),
    ("num_outputs", -1),
    ("seed", -1),
    ("seed", SEED_MAX + 1),
    ("seed", 10**40),
    ("scheduler", "karras"),
    ("scheduler", "DDIM"),
    ("scheduler", ""),
    ("scheduler", "euler a"),
    ("output_format", "gif"),
    ("output_format", "PNG"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=lambda v: str(v)[:20])
def test_values_past_the_bounds_are_400_naming_the_field(
    client: APIClient, field: str, value: Any
) -> None:
    # when a job is submitted with a value just outside its range
    response = submit(client, **{field: value})
    # then it is refused with a 400 that names the field, and nothing was created
    assert_400_naming(response, field)
    assert nothing_created()


@pytest.mark.parametrize(
    ("plan_steps", "model_steps", "ok", "refused"),
    [(40, 100, 40, 41), (150, 60, 60, 61), (150, 150, 150, 151), (1, 150, 1, 2)],
    ids=["plan-caps", "model-caps", "ceiling", "plan-of-one"],
)
def test_steps_are_capped_by_the_model_the_plan_and_150(
    plan_steps: int, model_steps: int, ok: int, refused: int
) -> None:
    # given a plan and a model, each with its own max_steps
    tenant = TenantFactory(plan=PlanFactory(max_steps=plan_steps))
    DiffusionModelFactory(slug="tiny", max_steps=model_steps, default_steps=1)
    client = api_client_for(tenant)
    # when steps are at the lower of the two caps, and one above it
    accepted = submit(client, steps=ok)
    over = submit(client, steps=refused)
    # then the first is accepted and the second is a 400 naming steps
    assert accepted.status_code == 202, accepted.content
    assert accepted.json()["input"]["steps"] == ok
    assert_400_naming(over, "steps")
    assert Job.objects.count() == 1


def test_the_plans_max_pixels_caps_width_times_height() -> None:
    # given a plan capped at 512x768 pixels
    tenant = TenantFactory(plan=PlanFactory(max_pixels=512 * 768))
    DiffusionModelFactory(slug="tiny", min_side=64, max_side=1024)
    client = api_client_for(tenant)
    # when images of exactly that many pixels, and of a little more, are asked for
    exact = submit(client, width=768, height=512)
    over = [
        submit(client, width=520, height=768),
        submit(client, width=768, height=520),
        submit(client, width=1024, height=1024),
    ]
    # then the first is accepted and the others are 400s naming the size
    assert exact.status_code == 202, exact.content
    for response in over:
        assert_400_naming(response, "width")
        assert "pixels" in response.json()["error"]["message"]
    assert Job.objects.count() == 1


def test_the_models_default_size_must_fit_the_plan() -> None:
    # given a plan that allows fewer pixels than the model's default size
    tenant = TenantFactory(plan=PlanFactory(max_pixels=256 * 256))
    DiffusionModelFactory(slug="tiny", default_width=512, default_height=512, min_side=64)
    client = api_client_for(tenant)
    # when a job relies on the default size, or asks for one that fits
    defaulted = submit(client)
    small = submit(client, width=256, height=256)
    # then the default is checked like a given size
    assert_400_naming(defaulted, "width")
    assert small.status_code == 202, small.content
