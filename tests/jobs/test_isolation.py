"""Two tenants: neither can see, change or use the other's jobs, uploads, models or usage.

Another tenant's object is a 404 (or, as a job input, a 400), the same as a missing one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from rest_framework.response import Response
from rest_framework.test import APIClient

from jobs.models import (
    DiffusionModel,
    Family,
    IdempotencyRecord,
    Job,
    JobEvent,
    LoraAdapter,
    Upload,
)
from jobs.services.submit import job_submit
from tenants.models import CreditPeriod, Tenant, UsageRecord
from tests.support.api import assert_error
from tests.support.factories import (
    DiffusionModelFactory,
    LoraFactory,
    PlanFactory,
    TenantFactory,
    UploadFactory,
    api_client_for,
)

pytestmark = pytest.mark.django_db


@dataclass
class Side:
    tenant: Tenant
    client: APIClient
    model: DiffusionModel
    lora: LoraAdapter
    upload: Upload


def make_side(name: str) -> Side:
    tenant = TenantFactory(name=name, plan=PlanFactory(max_concurrent_jobs=1))
    return Side(
        tenant=tenant,
        client=api_client_for(tenant),
        model=DiffusionModelFactory(slug=f"{name}-private", owner=tenant),
        lora=LoraFactory(slug=f"{name}-lora", owner=tenant, family=Family.SD15),
        upload=UploadFactory(tenant=tenant),
    )


def submit(side: Side, **fields: Any) -> Job:
    job, _ = job_submit(
        tenant=side.tenant, data={"model": "public", "prompt": "a walled garden", **fields}
    )
    return job


@pytest.fixture
def public_model() -> DiffusionModel:
    return DiffusionModelFactory(slug="public")  # type: ignore[no-any-return]


@pytest.fixture
def alice(public_model: DiffusionModel) -> Side:
    return make_side("alice")


@pytest.fixture
def bob(public_model: DiffusionModel) -> Side:
    return make_side("bob")


def state(tenant: Tenant) -> tuple[object, ...]:
    """Everything a denied request must leave unchanged for a tenant."""
    return (
        list(
            Job.objects.filter(tenant=tenant)
            .order_by("id")
            .values_list("public_id", "status", "attempt", "completed_at", "credits_reserved")
        ),
        list(CreditPeriod.objects.filter(tenant=tenant).values_list("month", "reserved", "used")),
        JobEvent.objects.filter(job__tenant=tenant).count(),
        UsageRecord.objects.filter(tenant=tenant).count(),
        IdempotencyRecord.objects.filter(tenant=tenant).count(),
    )


def shape_of_not_found(response: Response, object_id: str) -> dict[str, Any]:
    """The 404 body with the asked-for id blanked, to compare answers for different ids."""
    assert response.status_code == 404, response.content
    body: dict[str, Any] = response.json()
    assert body["error"]["code"] == "not_found"
    body["error"]["message"] = body["error"]["message"].replace(object_id, "<id>")
    return body


MISSING_JOB = "job_00000000000000000000"


def ids_in(response: Response) -> set[str]:
    assert response.status_code == 200, response.content
    return {item["id"] for item in response.json()["results"]}


# --- objects by id -------------------------------------------------------------------------------

BY_ID = [("get", "/v1/jobs/{id}"), ("post", "/v1/jobs/{id}/cancel")]


@pytest.mark.parametrize(("method", "path"), BY_ID, ids=[f"{m.upper()} {p}" for m, p in BY_ID])
@pytest.mark.parametrize("job_state", ["starting", "queued"])
def test_another_tenants_job_is_404_like_a_missing_one(
    alice: Side, bob: Side, method: str, path: str, job_state: str
) -> None:
    # given alice's job (her first is admitted, the second waits queued) and bob's own job
    jobs = [submit(alice), submit(alice)]
    job = next(j for j in jobs if j.status == job_state)
    submit(bob)
    before = (state(alice.tenant), state(bob.tenant))
    # when bob addresses alice's job, and a job id that does not exist
    theirs = getattr(bob.client, method)(path.format(id=job.public_id))
    missing = getattr(bob.client, method)(path.format(id=MISSING_JOB))
    # then both answers are the same 404, and nothing changed for either tenant
    assert shape_of_not_found(theirs, job.public_id) == shape_of_not_found(missing, MISSING_JOB)
    assert theirs.headers.keys() == missing.headers.keys()
    assert (state(alice.tenant), state(bob.tenant)) == before
    # while alice herself still gets her job
    assert getattr(alice.client, method)(path.format(id=job.public_id)).status_code == 200


def test_denied_cancel_leaves_the_job_to_its_owner(alice: Side, bob: Side) -> None:
    # given alice's running job, with one credit reserved
    job = submit(alice)
    assert CreditPeriod.objects.get(tenant=alice.tenant).reserved == 1
    # when bob tries to cancel it
    assert bob.client.post(f"/v1/jobs/{job.public_id}/cancel").status_code == 404
    # then it is still running with its reservation, and alice can cancel it herself
    job.refresh_from_db()
    assert job.status == "starting"
    assert CreditPeriod.objects.get(tenant=alice.tenant).reserved == 1
    response = alice.client.post(f"/v1/jobs/{job.public_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert CreditPeriod.objects.get(tenant=alice.tenant).reserved == 0


# --- lists ---------------------------------------------------------------------------------------


def test_job_list_shows_only_the_callers_jobs(alice: Side, bob: Side) -> None:
    # given interleaved jobs of both tenants, in several states
    mine = [submit(alice), submit(bob), submit(alice), submit(bob), submit(alice)]
    alices = {j.public_id for j in mine if j.tenant_id == alice.tenant.pk}
    bobs = {j.public_id for j in mine if j.tenant_id == bob.tenant.pk}
    # when each lists its jobs, unfiltered and by every filter
    # then each sees exactly its own
    assert ids_in(alice.client.get("/v1/jobs")) == alices
    assert ids_in(bob.client.get("/v1/jobs")) == bobs
    for status in Job.Status.values:
        assert ids_in(bob.client.get("/v1/jobs", {"status": status})) <= bobs
    assert ids_in(bob.client.get("/v1/jobs", {"model": "public"})) == bobs


def test_job_list_by_the_other_tenants_private_model_is_empty(alice: Side, bob: Side) -> None:
    # given alice's job on her private model
    job = submit(alice, model=alice.model.slug)
    assert ids_in(alice.client.get("/v1/jobs", {"model": alice.model.slug})) == {job.public_id}
    # when bob filters his list by that model
    # then he sees nothing
    assert ids_in(bob.client.get("/v1/jobs", {"model": alice.model.slug})) == set()


def test_job_list_pages_never_cross_tenants(alice: Side, bob: Side) -> None:
    # given 12 jobs of alice's, interleaved with 12 of bob's
    for _ in range(12):
        submit(alice)
        submit(bob)
    # when bob pages through his list 5 at a time
    seen: list[str] = []
    url: str | None = "/v1/jobs?limit=5"
    while url:
        page = bob.client.get(url)
        assert page.status_code == 200
        seen += [item["id"] for item in page.json()["results"]]
        url = page.json()["next"]
    # then he sees his 12 and none of alice's
    assert len(seen) == len(set(seen)) == 12
    assert set(seen) == set(
        Job.objects.filter(tenant=bob.tenant).values_list("public_id", flat=True)
    )


def test_model_list_hides_the_other_tenants_private_models(alice: Side, bob: Side) -> None:
    # when each lists the models
    # then each sees the public model and its own private one, never the other's
    assert ids_in(alice.client.get("/v1/models")) == {"public", alice.model.slug}
    assert ids_in(bob.client.get("/v1/models")) == {"public", bob.model.slug}
    visibility = {m["id"]: m["visibility"] for m in bob.client.get("/v1/models").json()["results"]}
    assert visibility == {"public": "public", bob.model.slug: "private"}


def test_lora_list_hides_the_other_tenants_private_loras(alice: Side, bob: Side) -> None:
    # given a public LoRA besides the two private ones
    LoraFactory(slug="public-lora")
    # when each lists the LoRAs
    # then each sees the public one and its own, never the other's
    assert ids_in(alice.client.get("/v1/loras")) == {"public-lora", alice.lora.slug}
    assert ids_in(bob.client.get("/v1/loras")) == {"public-lora", bob.lora.slug}


def test_usage_counts_only_the_callers_jobs(alice: Side, bob: Side) -> None:
    # given alice with 3 images reserved and 1 job in flight, and bob with nothing
    submit(alice, num_outputs=2)
    submit(alice)
    # when each reads its usage
    alices = alice.client.get("/v1/usage").json()
    bobs = bob.client.get("/v1/usage").json()
    # then alice's counts are hers, bob's are all zero
    assert alices["credits"]["reserved"] == 3
    assert alices["concurrency"]["in_flight"] == 1
    assert bobs["credits"] == {"limit": 1000, "used": 0, "reserved": 0, "remaining": 1000}
    assert bobs["concurrency"]["in_flight"] == 0


# --- the other tenant's objects as job input -----------------------------------------------------


def message_without(response: Response, value: str) -> str:
    return str(response.json()["error"]["message"]).replace(value, "<id>")


@pytest.mark.parametrize(
    ("field", "mine", "missing"),
    [
        ("image", lambda s: {"image": s.upload.public_id}, {"image": "upl_00000000000000000000"}),
        ("model", lambda s: {"model": s.model.slug}, {"model": "no-such-model"}),
        (
            "loras[0].slug",
            lambda s: {"loras": [{"slug": s.lora.slug}]},
            {"loras": [{"slug": "no-such-lora"}]},
        ),
    ],
    ids=["upload", "private-model", "private-lora"],
)
def test_using_another_tenants_object_as_input_is_400_and_creates_nothing(
    alice: Side, bob: Side, field: str, mine: Any, missing: dict[str, Any]
) -> None:
    # given alice's private upload, model and LoRA, each usable by alice
    body = {"model": "public", "prompt": "a borrowed brush"}
    assert alice.client.post("/v1/jobs", {**body, **mine(alice)}, format="json").status_code == 202
    before = (state(alice.tenant), state(bob.tenant))
    uploads = list(Upload.objects.order_by("id").values())
    # when bob names alice's object in a job, and an object that does not exist
    theirs = bob.client.post(
        "/v1/jobs", {**body, **mine(alice)}, format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    absent = bob.client.post("/v1/jobs", {**body, **missing}, format="json")
    # then both are the same 400 naming the field, and nothing was created or changed
    assert_error(theirs, 400, "invalid_input", field)
    assert_error(absent, 400, "invalid_input", field)
    value = re.findall(r"'([^']+)'", theirs.json()["error"]["message"])[0]
    other = re.findall(r"'([^']+)'", absent.json()["error"]["message"])[0]
    assert message_without(theirs, value) == message_without(absent, other)
    assert (state(alice.tenant), state(bob.tenant)) == before
    assert list(Upload.objects.order_by("id").values()) == uploads


def test_the_same_idempotency_key_in_two_tenants_makes_two_jobs(alice: Side, bob: Side) -> None:
    # given alice created a job with an Idempotency-Key
    body = {"model": "public", "prompt": "a shared key", "seed": 1}
    first = alice.client.post("/v1/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    # when bob sends the same body with the same key
    second = bob.client.post("/v1/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    # then bob gets a job of his own, not alice's
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]
    assert Job.objects.get(public_id=second.json()["id"]).tenant_id == bob.tenant.pk
    assert Job.objects.filter(tenant=alice.tenant).count() == 1
