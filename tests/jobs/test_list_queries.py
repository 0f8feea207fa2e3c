"""The job list costs a constant number of queries whatever its page size, and its queue
positions are those of the single-job GET: 0-based among the tenant's own queued jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pytest_django import DjangoAssertNumQueries
from rest_framework.test import APIClient

from jobs import selectors
from jobs.models import Job
from jobs.services.lifecycle import job_cancel
from jobs.services.submit import job_submit
from tenants.models import Tenant
from tests.support.factories import (
    DiffusionModelFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)

# What one list page costs, whatever its size: the key lookup, the page, the queue positions.
LIST_PAGE_MAX_QUERIES = 3


@dataclass
class Queues:
    """Two tenants with a cap of one job in flight, their jobs interleaved by id."""

    ours: Tenant
    theirs: Tenant
    clients: dict[str, APIClient]  # by "ours", "theirs"
    jobs: list[Job]  # ours, in submit order


def submit(tenant: Tenant, model: str) -> Job:
    job, _ = job_submit(tenant=tenant, data={"model": model, "prompt": "a red fox"})
    return job


@pytest.fixture
def queues(db: None) -> Queues:
    DiffusionModelFactory(slug="tiny")
    DiffusionModelFactory(slug="other")
    ours, theirs = (TenantFactory(plan=PlanFactory(max_concurrent_jobs=1)) for _ in range(2))
    jobs = []
    for index in range(12):
        # On two models; theirs land between ours in the id order.
        model = "tiny" if index % 3 else "other"
        jobs.append(submit(ours, model))
        submit(theirs, model)
    # A canceled job in the middle of the queue no longer counts.
    job_cancel(tenant=ours, job_public_id=jobs[4].public_id)
    clients = {"ours": api_client_for(ours), "theirs": api_client_for(theirs)}
    for client in clients.values():  # a key's first use writes its last_used_at
        assert client.get("/v1/jobs?limit=1").status_code == 200
    return Queues(ours, theirs, clients, jobs)


def expected_positions(tenant: Tenant) -> dict[str, int | None]:
    """The definition: how many of the tenant's queued jobs were submitted before, by job."""
    jobs = Job.objects.filter(tenant=tenant).order_by("id")
    queued = list(jobs.filter(status="queued").values_list("public_id", flat=True))
    statuses = dict(jobs.values_list("public_id", "status"))
    return {
        public_id: queued.index(public_id) if status == "queued" else None
        for public_id, status in statuses.items()
    }


def list_page(client: APIClient, query: str) -> tuple[list[dict[str, Any]], int]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == 200
    return response.json()["results"], len(captured.captured_queries)


@pytest.mark.django_db
def test_a_page_of_one_and_a_page_of_many_take_the_same_few_queries(
    queues: Queues, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    # given 12 jobs of ours (one in flight, one canceled, 10 queued) between 12 of another tenant's
    client = queues.clients["ours"]
    # when a page of one queued job and a page of all of them are listed
    with django_assert_max_num_queries(LIST_PAGE_MAX_QUERIES):
        one, one_queries = list_page(client, "limit=1")
    with django_assert_max_num_queries(LIST_PAGE_MAX_QUERIES):
        many, many_queries = list_page(client, "limit=100")
    # then both take the same number of queries
    assert one_queries == many_queries
    assert [job["queue_position"] for job in one] == [9]
    # and the big page has every job of ours, placed among our own queued jobs only
    assert [job["id"] for job in many] == [job.public_id for job in reversed(queues.jobs)]
    positions = [job["queue_position"] for job in reversed(many)]
    assert positions == [None, 0, 1, 2, None, 3, 4, 5, 6, 7, 8, 9]


@pytest.mark.django_db
@pytest.mark.parametrize("whose", ["ours", "theirs"])
@pytest.mark.parametrize(
    "query",
    ["limit=100", "limit=3", "status=queued&limit=4", "model=tiny&limit=100", "model=other"],
)
def test_list_positions_are_the_definition_and_the_single_job_gets(
    queues: Queues, whose: str, query: str
) -> None:
    # given the expected position of each job of the tenant
    client = queues.clients[whose]
    expected = expected_positions(queues.ours if whose == "ours" else queues.theirs)
    # when its list is read (filtered, and page by page)
    listed: dict[str, int | None] = {}
    url: str | None = f"/v1/jobs?{query}"
    while url:
        response = client.get(url)
        assert response.status_code == 200
        listed.update({job["id"]: job["queue_position"] for job in response.json()["results"]})
        url = response.json()["next"]
    # then each job listed has the position of the definition, and of the single-job GET
    assert listed
    for public_id, position in listed.items():
        assert position == expected[public_id], public_id
        single = client.get(f"/v1/jobs/{public_id}").json()
        assert single["queue_position"] == position, public_id


@pytest.mark.django_db
def test_positions_are_counted_up_to_the_cap_in_the_list_and_the_single_job_get(
    queues: Queues, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a cap below our 10 queued jobs
    monkeypatch.setattr(selectors, "QUEUE_POSITION_CAP", 3)
    client = queues.clients["ours"]
    expected = {
        public_id: None if position is None else min(position, 3)
        for public_id, position in expected_positions(queues.ours).items()
    }
    assert sorted(p for p in expected.values() if p is not None) == [0, 1, 2] + [3] * 7
    # when the list and each job are read, then a job further back than the cap shows the cap
    listed = client.get("/v1/jobs?limit=100").json()["results"]
    assert {job["id"]: job["queue_position"] for job in listed} == expected
    for public_id, position in expected.items():
        assert client.get(f"/v1/jobs/{public_id}").json()["queue_position"] == position
