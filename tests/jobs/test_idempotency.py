from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from jobs.models import IdempotencyRecord, Job
from tenants.models import CreditPeriod
from tests.conftest import requires_postgres
from tests.support.concurrency import run_parallel
from tests.support.factories import DiffusionModelFactory, TenantFactory, api_client_for

pytestmark = pytest.mark.usefixtures("local_aws")
BODY = {"model": "tiny", "prompt": "a lighthouse at dusk", "seed": 7}


def post(client, body, key):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


@pytest.mark.django_db(transaction=True)
def test_same_key_same_body_returns_the_original_job(tenant, model, client):  # type: ignore[no-untyped-def]
    # given a job created with a key
    first = post(client, BODY, "order-1")
    # when the same request is sent again with the same key
    again = post(client, BODY, "order-1")
    # then it answers the same job, and only one job and one reservation exist
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1
    assert CreditPeriod.objects.get(tenant=tenant).reserved == 1


@pytest.mark.django_db(transaction=True)
def test_same_key_other_body_is_422_and_creates_nothing(tenant, model, client):  # type: ignore[no-untyped-def]
    post(client, BODY, "order-1")
    response = post(client, {**BODY, "prompt": "another prompt"}, "order-1")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert Job.objects.count() == 1
    assert CreditPeriod.objects.get(tenant=tenant).reserved == 1


@pytest.mark.django_db(transaction=True)
def test_keys_are_per_tenant(tenant, other_tenant, model, client):  # type: ignore[no-untyped-def]
    mine = post(client, BODY, "shared-key")
    theirs = post(api_client_for(other_tenant), BODY, "shared-key")
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.django_db(transaction=True)
def test_key_expires_after_24_hours(tenant, model, client):  # type: ignore[no-untyped-def]
    first = post(client, BODY, "order-1")
    IdempotencyRecord.objects.update(created_at=timezone.now() - dt.timedelta(hours=25))
    again = post(client, BODY, "order-1")
    assert again.status_code == 202
    assert again.json()["id"] != first.json()["id"]
    assert Job.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_invalid_key_is_400(tenant, model, client):  # type: ignore[no-untyped-def]
    response = post(client, BODY, "x" * 256)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["message"]
    assert Job.objects.count() == 0


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_create_one_job():  # type: ignore[no-untyped-def]
    # given a tenant and 8 clients sending the same request with one key at the same moment
    tenant = TenantFactory()
    DiffusionModelFactory(slug="tiny")
    clients = [api_client_for(tenant) for _ in range(8)]
    # when they race
    responses = run_parallel(8, lambda i: post(clients[i], BODY, "race-key"))
    # then all are answered with the same single job, and one credit is reserved
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert Job.objects.count() == 1
    assert CreditPeriod.objects.get(tenant=tenant).reserved == 1
