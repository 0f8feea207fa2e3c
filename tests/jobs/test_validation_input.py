"""Job input fields: the model, LoRAs, unknown and required fields; a valid request is resolved
with every default, and a refused one leaves nothing behind, not even its idempotency key."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import Family, Job
from tenants.models import Tenant
from tests.support.factories import DiffusionModelFactory, LoraFactory
from tests.support.validation import (
    HTTPS_IMAGE,
    SEED_MAX,
    assert_400_naming,
    nothing_created,
    submit,
)

# The fixtures `tenant`, `model`, `client` and `loras` of the validation tests:
from tests.support.validation import validation_client as validation_client
from tests.support.validation import validation_loras as validation_loras
from tests.support.validation import validation_model as validation_model
from tests.support.validation import validation_tenant as validation_tenant

pytestmark = pytest.mark.django_db

# --- model and LoRAs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slug", ["no-such-model", "off", "Tiny", "tiny-"], ids=["unknown", "disabled", "case", "typo"]
)
def test_unknown_or_disabled_model_is_400_naming_model(client: APIClient, slug: str) -> None:
    # given a disabled model besides the enabled one
    DiffusionModelFactory(slug="off", enabled=False)
    # when a job names a model the tenant cannot use
    response = submit(client, model=slug)
    # then it is a 400 naming model
    assert_400_naming(response, "model")
    assert nothing_created()


def test_five_loras_are_accepted_with_their_default_or_given_weights(
    client: APIClient, loras: list[str]
) -> None:
    # when a job uses five LoRAs, at the weight bounds and with the default weight
    requested = [
        {"slug": loras[0], "weight": -2},
        {"slug": loras[1], "weight": 2},
        {"slug": loras[2], "weight": 0},
        {"slug": loras[3]},
        {"slug": loras[4], "weight": 0.35},
    ]
    response = submit(client, loras=requested)
    # then all five are used in order, a missing weight taking the LoRA's default (1.0)
    assert response.status_code == 202, response.content
    assert response.json()["input"]["loras"] == [
        {"slug": loras[0], "weight": -2},
        {"slug": loras[1], "weight": 2},
        {"slug": loras[2], "weight": 0},
        {"slug": loras[3], "weight": 1.0},
        {"slug": loras[4], "weight": 0.35},
    ]


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("loras", lambda s: [{"slug": slug} for slug in s]),
        ("loras", lambda s: [{"slug": s[0]}, {"slug": s[0]}]),
        ("loras[0].weight", lambda s: [{"slug": s[0], "weight": 2.01}]),
        ("loras[0].weight", lambda s: [{"slug": s[0], "weight": -2.01}]),
        ("loras[1].weight", lambda s: [{"slug": s[0]}, {"slug": s[1], "weight": 3}]),
        ("loras[0].slug", lambda s: [{"slug": "no-such-lora"}]),
        ("loras[1].slug", lambda s: [{"slug": s[0]}, {"slug": "no-such-lora"}]),
        ("loras[0].slug", lambda s: [{"slug": "xl-style"}]),
        ("loras[0].slug", lambda s: [{"slug": "off-style"}]),
        ("loras[0].slug", lambda s: [{"weight": 1}]),
        ("loras[0].wieght", lambda s: [{"slug": s[0], "wieght": 1}]),
        ("loras[2].scale", lambda s: [{"slug": s[0]}, {"slug": s[1]}, {"slug": s[2], "scale": 1}]),
    ],
    ids=[
        "six",
        "duplicate",
        "weight-over",
        "weight-under",
        "second-weight",
        "unknown",
        "second-unknown",
        "other-family",
        "disabled",
        "no-slug",
        "typo-field",
        "third-unknown-field",
    ],
)
def test_bad_loras_are_400_naming_the_lora(
    client: APIClient, loras: list[str], field: str, make: Any
) -> None:
    # given an SDXL LoRA and a disabled one besides the six SD 1.5 LoRAs
    LoraFactory(slug="xl-style", family=Family.SDXL)
    LoraFactory(slug="off-style", enabled=False)
    # when a job asks for LoRAs that break a rule
    response = submit(client, loras=make(loras))
    # then it is a 400 naming the offending LoRA by its index
    assert_400_naming(response, field)
    assert nothing_created()


# --- unknown and required fields ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["step", "cfg_scale", "Prompt", "negativePrompt", "webhook_url", "tenant"]
)
def test_unknown_fields_are_400_naming_them(client: APIClient, field: str) -> None:
    # when a job has a field the API does not know (often a typo of one it does)
    response = submit(client, **{field: 30})
    # then it is refused rather than silently ignored
    assert_400_naming(response, field)
    assert "Unknown field" in response.json()["error"]["message"]
    assert nothing_created()


@pytest.mark.parametrize("field", ["model", "prompt"])
def test_required_fields_are_400_naming_them(client: APIClient, field: str) -> None:
    body = {"model": "tiny", "prompt": "a paper boat"}
    del body[field]
    response = client.post("/v1/jobs", body, format="json")
    assert_400_naming(response, field)
    assert nothing_created()


# --- a valid request -----------------------------------------------------------------------------


def test_valid_request_is_202_with_the_resolved_input(client: APIClient) -> None:
    # when a job gives only a model and a prompt
    response = submit(client, prompt="a paper boat")
    # then it is accepted with every default applied and a seed chosen
    assert response.status_code == 202, response.content
    job = response.json()
    resolved = job["input"]
    seed = resolved.pop("seed")
    assert isinstance(seed, int)
    assert 0 <= seed <= SEED_MAX
    assert resolved == {
        "prompt": "a paper boat",
        "negative_prompt": "",
        "width": 512,
        "height": 512,
        "steps": 20,
        "guidance": 7.5,
        "scheduler": "dpmpp_2m",
        "num_outputs": 1,
        "loras": [],
        "output_format": "png",
    }
    assert (job["model"], job["kind"]) == ("tiny", "txt2img")
    assert job["id"].startswith("job_")
    assert job["urls"]["get"].endswith(f"/v1/jobs/{job['id']}")
    # and the seed is stored: the job reads back with the same resolved input
    stored = Job.objects.get(public_id=job["id"])
    assert stored.input == {**resolved, "seed": seed}
    assert client.get(f"/v1/jobs/{job['id']}").json()["input"]["seed"] == seed


def test_every_given_value_is_kept(client: APIClient, loras: list[str]) -> None:
    given = {
        "prompt": "a paper boat",
        "negative_prompt": "blurry",
        "width": 768,
        "height": 320,
        "steps": 42,
        "guidance": 0.0,
        "scheduler": "euler_a",
        "num_outputs": 3,
        "seed": 0,
        "loras": [{"slug": loras[0], "weight": 0.5}],
        "output_format": "webp",
        "image": HTTPS_IMAGE,
        "strength": 0.25,
    }
    response = client.post("/v1/jobs", {"model": "tiny", **given}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["input"] == given
    assert Job.objects.get().input == given
    assert Job.objects.get().credits_reserved == 3


@pytest.mark.parametrize("seed", [0, 1, 1234567, SEED_MAX])
def test_a_given_seed_is_used_identically(client: APIClient, seed: int) -> None:
    # when two jobs give the same seed
    first = submit(client, seed=seed)
    second = submit(client, seed=seed)
    # then both record exactly that seed
    assert first.json()["input"]["seed"] == second.json()["input"]["seed"] == seed
    assert [job.input["seed"] for job in Job.objects.all()] == [seed, seed]


def test_a_chosen_seed_is_stored_per_job(client: APIClient) -> None:
    # when several jobs give no seed
    responses = [submit(client) for _ in range(5)]
    # then each has a seed of its own, stored as it was answered
    seeds = [r.json()["input"]["seed"] for r in responses]
    stored = {job.public_id: job.input["seed"] for job in Job.objects.all()}
    assert [stored[r.json()["id"]] for r in responses] == seeds
    assert len(set(seeds)) > 1


# --- a refused request leaves nothing behind ------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"width": 513},
        {"step": 20},
        {"model": "no-such-model"},
        {"steps": 101},
        {"width": 1024, "height": 1032},
        {"image": "upl_00000000000000000000"},
        {"loras": [{"slug": "no-such-lora"}]},
        {"loras": [{"slug": "xl-style"}]},
        {"strength": 0.5},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items())[:30],
)
def test_a_refused_request_creates_nothing_and_does_not_burn_its_idempotency_key(
    client: APIClient, tenant: Tenant, fields: dict[str, Any]
) -> None:
    # given an SDXL LoRA, which the SD 1.5 model cannot use
    LoraFactory(slug="xl-style", family=Family.SDXL)
    # when a refused request is sent with an Idempotency-Key
    body = {"model": "tiny", "prompt": "a paper boat", **fields}
    refused = client.post("/v1/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    # then it created no job, no event, no reservation and no idempotency record
    assert refused.status_code == 400, refused.content
    assert nothing_created()
    assert client.get("/v1/usage").json()["credits"]["reserved"] == 0
    # and the key is still free for the corrected request
    fixed = client.post(
        "/v1/jobs",
        {"model": "tiny", "prompt": "a paper boat"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    assert fixed.status_code == 202, fixed.content


@pytest.mark.parametrize(
    "webhook",
    [
        "https://hooks.example.com/é",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/\t",
    ],
)
def test_a_webhook_of_other_than_visible_ascii_is_400_naming_webhook(
    client: APIClient, webhook: str
) -> None:
    # as an endpoint's URL is refused: a URL is ASCII, anything else percent-encoded
    response = submit(client, webhook=webhook)
    assert_400_naming(response, "webhook")
    assert nothing_created()
