"""What the API tests share: the one error shape, a job submitted through the API, and the
credits a tenant has used and reserved."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework.test import APIClient

from jobs.models import Job
from sdsaas.contract import job_output_prefix
from tenants.models import CreditPeriod, Tenant, month_of


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> None:
    """An error in the one shape, `{"error": {"code", "message", "details"}}` as JSON, with this
    status and code; with `field`, its message starts with the field's path and its details name
    the field."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    if field is not None:
        assert message.startswith(f"{field}:"), body
        assert field in body["error"]["details"], body


def submit_job(client: APIClient, **fields: Any) -> str:
    """POST /v1/jobs for the tiny model; the id of the job, which the API must have accepted."""
    body = {"model": "tiny", "prompt": "a kettle", **fields}
    response = client.post("/v1/jobs", body, format="json")
    assert response.status_code == 202, response.json()
    return str(response.json()["id"])


def credits(tenant: Tenant) -> tuple[int, int]:
    """The tenant's credits of this month: (used, reserved)."""
    period = CreditPeriod.objects.get(tenant=tenant, month=month_of(timezone.now()))
    return period.used, period.reserved


def own_keys(job_id: str, count: int = 1) -> list[str]:
    """Output keys under the job's own prefix, as its worker reports them."""
    job = Job.objects.get(public_id=job_id)
    prefix = job_output_prefix(job.tenant_id, job.public_id)
    return [f"{prefix}{n}.png" for n in range(count)]
