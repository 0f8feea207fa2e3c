from __future__ import annotations

import pytest

from jobs.models import Job
from sdsaas.broker.sqs import model_queue_name
from sdsaas.contract import TASK_GPU_GENERATE
from tests.support.factories import (
    DiffusionModelFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)

pytestmark = pytest.mark.usefixtures("local_aws")


def submit(client, model: str = "tiny", **fields):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", {"model": model, "prompt": "a red fox", **fields}, format="json")


@pytest.mark.django_db(transaction=True)
def test_cap_2_of_5_submits_publishes_2_and_keeps_3_queued(local_aws):  # type: ignore[no-untyped-def]
    # given a tenant with a concurrency cap of 2
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=2))
    DiffusionModelFactory(slug="tiny")
    client = api_client_for(tenant)
    # when it submits 5 jobs
    responses = [submit(client) for _ in range(5)]
    # then all are accepted, 2 are in the model's queue, 3 wait in Postgres in order
    assert [r.status_code for r in responses] == [202] * 5
    tasks = local_aws.drain_tasks(model_queue_name("tiny"))
    assert len(tasks) == 2
    assert {t["task"] for t in tasks} == {TASK_GPU_GENERATE}
    published = {t["kwargs"]["job"]["job_id"] for t in tasks}
    assert published == {r.json()["id"] for r in responses[:2]}
    assert [r.json()["status"] for r in responses] == ["starting"] * 2 + ["queued"] * 3
    assert Job.objects.filter(status="queued").count() == 3
    assert [r.json()["queue_position"] for r in responses[2:]] == [0, 1, 2]
