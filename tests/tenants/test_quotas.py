from __future__ import annotations

import pytest
from django.utils import timezone

from jobs.models import Job
from tenants.models import CreditPeriod, month_of
from tenants.services import credits_release
from tests.conftest import requires_postgres
from tests.support.concurrency import run_parallel
from tests.support.factories import (
    DiffusionModelFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)

pytestmark = pytest.mark.usefixtures("local_aws")


def submit(client, **fields):  # type: ignore[no-untyped-def]
    body = {"model": "tiny", "prompt": "a quiet harbour", **fields}
    return client.post("/v1/jobs", body, format="json")


def tenant_with_credits_left(left: int, **plan):  # type: ignore[no-untyped-def]
    tenant = TenantFactory(plan=PlanFactory(monthly_credits=left + 3, **plan))
    CreditPeriod.objects.create(tenant=tenant, month=month_of(timezone.now()), used=3)
    return tenant


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_20_parallel_submits_with_5_credits_left_accept_exactly_5():  # type: ignore[no-untyped-def]
    # given a tenant with 5 credits left this month
    tenant = tenant_with_credits_left(5, max_concurrent_jobs=50)
    DiffusionModelFactory(slug="tiny")
    clients = [api_client_for(tenant) for _ in range(20)]
    # when it sends 20 submits at once
    responses = run_parallel(20, lambda i: submit(clients[i]))
    # then exactly 5 are accepted and 15 are refused with 402 quota_exceeded
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 5 + [402] * 15
    refused = [r.json() for r in responses if r.status_code == 402]
    assert {body["error"]["code"] for body in refused} == {"quota_exceeded"}
    assert Job.objects.filter(tenant=tenant).count() == 5
    period = CreditPeriod.objects.get(tenant=tenant)
    assert (period.used, period.reserved) == (3, 5)


@pytest.mark.django_db(transaction=True)
def test_more_images_than_credits_left_is_402_and_creates_nothing():  # type: ignore[no-untyped-def]
    tenant = tenant_with_credits_left(2)
    DiffusionModelFactory(slug="tiny")
    response = submit(api_client_for(tenant), num_outputs=3)
    assert response.status_code == 402
    assert response.json()["error"]["details"]["remaining"] == 2
    assert not Job.objects.exists()
    assert CreditPeriod.objects.get(tenant=tenant).reserved == 0


@pytest.mark.django_db(transaction=True)
def test_rate_limit_gives_429_with_retry_after():  # type: ignore[no-untyped-def]
    # given a plan of 3 write requests per minute
    tenant = TenantFactory(plan=PlanFactory(requests_per_minute=3, max_concurrent_jobs=10))
    other = TenantFactory(plan=PlanFactory(requests_per_minute=3))
    DiffusionModelFactory(slug="tiny")
    client = api_client_for(tenant)
    # when it submits 4 times
    responses = [submit(client) for _ in range(4)]
    # then the 4th is refused with a Retry-After within the minute, and creates nothing
    assert [r.status_code for r in responses] == [202, 202, 202, 429]
    limited = responses[-1]
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert Job.objects.filter(tenant=tenant).count() == 3
    # reads are not limited, and another tenant has its own budget
    assert client.get("/v1/jobs").status_code == 200
    assert submit(api_client_for(other)).status_code == 202


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_rate_limit_is_race_safe():  # type: ignore[no-untyped-def]
    tenant = TenantFactory(plan=PlanFactory(requests_per_minute=4, max_concurrent_jobs=10))
    DiffusionModelFactory(slug="tiny")
    clients = [api_client_for(tenant) for _ in range(12)]
    responses = run_parallel(12, lambda i: submit(clients[i]))
    assert sorted(r.status_code for r in responses) == [202] * 4 + [429] * 8


@pytest.mark.django_db(transaction=True)
def test_usage_endpoint_reports_credits_and_concurrency():  # type: ignore[no-untyped-def]
    tenant = tenant_with_credits_left(5, max_concurrent_jobs=1)
    DiffusionModelFactory(slug="tiny")
    client = api_client_for(tenant)
    submit(client, num_outputs=2)
    submit(client)
    usage = client.get("/v1/usage").json()
    assert usage["credits"] == {"limit": 8, "used": 3, "reserved": 3, "remaining": 2}
    assert usage["concurrency"] == {"limit": 1, "in_flight": 1}


@pytest.mark.django_db
def test_releasing_more_than_is_reserved_changes_nothing_and_is_logged(caplog):  # type: ignore[no-untyped-def]
    tenant = tenant_with_credits_left(5)
    month = month_of(timezone.now())
    CreditPeriod.objects.filter(tenant=tenant, month=month).update(reserved=1)
    credits_release(tenant=tenant, month=month, amount=2)
    assert CreditPeriod.objects.get(tenant=tenant, month=month).reserved == 1
    assert "2 credits of" in caplog.text and "fewer were reserved" in caplog.text
