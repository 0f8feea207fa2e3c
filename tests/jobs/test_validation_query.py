"""Query parameters of GET /v1/jobs: filters, limit and cursor are checked, each refusal a 400
naming the parameter; cursor pagination pages without gaps or duplicates."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import pytest
from rest_framework.test import APIClient

from jobs.models import Job
from tenants.models import Tenant
from tests.support.factories import JobFactory
from tests.support.validation import assert_400_naming

# The fixtures `tenant`, `model` and `client` of the validation tests:
from tests.support.validation import validation_client as validation_client
from tests.support.validation import validation_model as validation_model
from tests.support.validation import validation_tenant as validation_tenant

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("status=QUEUED", "status"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("model=not%20a%20slug", "model"),
        ("state=queued", "state"),
        ("page=2", "page"),
        ("status=", "status"),
        ("model=", "model"),
        ("limit=", "limit"),
        ("cursor=", "cursor"),
        ("status=queued&status=failed", "status"),
        ("limit=10&limit=20", "limit"),
        ("model=tiny%0A", "model"),
        ("status=queued&Status=failed", "Status"),
    ],
)
def test_bad_job_list_filters_are_400_naming_the_parameter(
    client: APIClient, tenant: Tenant, query: str, field: str
) -> None:
    # given a job, so that a filter read as "no filter" would show
    make_jobs(tenant, 1)
    # when the list is asked for with an unknown, empty, repeated or malformed parameter
    response = client.get(f"/v1/jobs?{query}")
    # then it is a 400 naming the parameter, not a list read with the filter dropped
    assert_400_naming(response, field)


def _cursor(token: str) -> str:
    return quote(base64.b64encode(token.encode()).decode())


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "%00",
        "x" * 500,
        _cursor("o=abc"),
        _cursor("p=abc"),
        _cursor("p=-5"),
        _cursor("p=" + "9" * 30),
        _cursor("p=1.5&r=1"),
    ],
    ids=["garbage", "nul", "long", "offset", "position", "negative", "huge", "fraction"],
)
def test_a_cursor_the_api_did_not_write_is_400_naming_cursor(
    client: APIClient, tenant: Tenant, cursor: str
) -> None:
    # given a few jobs, so that a cursor is applied to a real query
    make_jobs(tenant, 3)
    # when the list is asked for with a cursor that is no `next` or `previous` link of a page
    client.raise_request_exception = False
    response = client.get(f"/v1/jobs?cursor={cursor}")
    # then it is a 400 naming the parameter (not the 404 of a missing page, nor a 500)
    assert_400_naming(response, "cursor")


def test_the_validated_limit_is_the_page_size(client: APIClient, tenant: Tenant) -> None:
    # given 6 jobs
    make_jobs(tenant, 6)
    # when a page of "4.0" is asked for (an integer once validated), then it holds 4 jobs
    assert len(client.get("/v1/jobs?limit=4.0").json()["results"]) == 4


def make_jobs(tenant: Tenant, count: int, **fields: Any) -> list[str]:
    """`count` jobs of the tenant on the tiny model, oldest first; queued unless `fields` say."""
    return [job.public_id for job in JobFactory.create_batch(count, tenant=tenant, **fields)]


def page_through(client: APIClient, url: str | None) -> list[list[str]]:
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        pages.append([job["id"] for job in response.json()["results"]])
        url = response.json()["next"]
        assert len(pages) <= 10, "pagination does not end"
    return pages


def test_cursor_pagination_pages_newest_first_without_duplicates(
    client: APIClient, tenant: Tenant
) -> None:
    # given 25 jobs
    created = make_jobs(tenant, 25)
    # when the list is read 10 at a time, following `next`
    pages = page_through(client, "/v1/jobs?limit=10")
    # then there are pages of 10, 10 and 5, newest first, each job exactly once
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [job for page in pages for job in page] == created[::-1]


def test_cursor_pagination_keeps_the_filter_and_goes_back(
    client: APIClient, tenant: Tenant
) -> None:
    # given 25 jobs, of which 2 are admitted and 23 wait queued
    make_jobs(tenant, 2, status=Job.Status.STARTING)
    make_jobs(tenant, 23)
    queued = list(
        Job.objects.filter(status="queued").order_by("-id").values_list("public_id", flat=True)
    )
    assert len(queued) == 23
    # when the queued ones are paged through 10 at a time
    pages = page_through(client, "/v1/jobs?status=queued&limit=10")
    # then the filter holds on every page
    assert [job for page in pages for job in page] == queued
    assert [len(page) for page in pages] == [10, 10, 3]
    # and `previous` of the second page leads back to the first
    first = client.get("/v1/jobs?status=queued&limit=10").json()
    second = client.get(first["next"]).json()
    back = client.get(second["previous"]).json()
    assert [job["id"] for job in back["results"]] == pages[0]
    assert first["previous"] is None


def test_job_list_defaults_to_20_a_page(client: APIClient, tenant: Tenant) -> None:
    make_jobs(tenant, 21)
    response = client.get("/v1/jobs")
    assert len(response.json()["results"]) == 20
    assert response.json()["next"]
