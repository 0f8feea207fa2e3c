"""The operators' endpoints (sdsaas/ops.py): liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from integrations.webhooks.models import WebhookAttempt, WebhookMessage
from jobs import metrics
from jobs.models import Job, WorkerPool
from sdsaas.broker.sqs import ensure_model_queue, sqs_client
from tests.integrations.safe_http.receiver import silent_listener
from tests.support.api_server import api_server
from tests.support.factories import DiffusionModelFactory, JobFactory, TenantFactory


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.django_db
def test_ready_when_the_database_answers(client: object) -> None:
    response = client.get("/readyz")  # type: ignore[attr-defined]
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_alive_but_not_ready_without_a_database_and_the_reason_stays_in_the_log(
    tmp_path: Path,
) -> None:
    # given the API with a database it cannot open
    log = tmp_path / "gunicorn.log"
    folder = tmp_path / "a-folder-not-a-database"
    folder.mkdir()
    with api_server(log, DATABASE_URL=f"sqlite:///{folder}") as base:
        # then it is alive, and not ready, in the API's error shape
        assert get(f"{base}/healthz") == (200, {"status": "ok"})
        status, body = get(f"{base}/readyz")
    assert status == 503
    assert body == {
        "error": {"code": "not_ready", "message": "The database does not answer.", "details": {}}
    }
    assert "not ready: the database does not answer" in log.read_text()


def scrape(client: Any, **headers: str) -> Any:
    return client.get("/metrics", **{f"HTTP_{k.upper()}": v for k, v in headers.items()})


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text, by its labels (None: no such sample)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
            if sample.split("{")[0] == name and found == labels:
                return float(value)
    return None


@pytest.mark.usefixtures("local_aws")
@pytest.mark.django_db(transaction=True)
def test_metrics_show_queues_pools_jobs_failures_stages_and_webhook_outcomes(
    settings: Any,
) -> None:
    # given a model with 3 waiting messages and a pool of 2, and jobs that ran or failed lately
    settings.METRICS_TOKEN = "metrics-token"
    model = DiffusionModelFactory(slug="sd15")
    url = ensure_model_queue("sd15")
    for n in range(3):
        sqs_client().send_message(QueueUrl=url, MessageBody=str(n))
    WorkerPool.objects.create(model=model, workers=2)
    now = timezone.now()
    for inference_s in (1.0, 2.0, 3.0):
        JobFactory(
            model=model,
            status=Job.Status.SUCCEEDED,
            completed_at=now,
            metrics={"queue_s": 0.5, "load_s": 0.0, "inference_s": inference_s, "upload_s": 0.1},
        )
    JobFactory(model=model, status=Job.Status.FAILED, error_code="timeout", completed_at=now)
    JobFactory(model=model, status=Job.Status.QUEUED)
    message = WebhookMessage.objects.create(
        tenant=TenantFactory(),
        job_url="https://hooks.example.com/sdsaas",
        event_type="job.succeeded",
        event_at=now,
    )
    WebhookAttempt.objects.create(message=message, number=1, started_at=now, succeeded=False)
    WebhookAttempt.objects.create(message=message, number=2, started_at=now, succeeded=True)
    client = Client()
    # when Prometheus scrapes without the token, then it is refused
    assert scrape(client).status_code == 401
    assert scrape(client, authorization="Bearer wrong").status_code == 401
    # and with it, at the task's own address, it gets each figure
    response = scrape(client, authorization="Bearer metrics-token", host="10.0.3.17:8000")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert metric(text, "sdsaas_queue_messages", model="sd15", state="visible") == 3
    assert metric(text, "sdsaas_queue_messages", model="sd15", state="in_flight") == 0
    assert metric(text, "sdsaas_pool_workers", model="sd15") == 2
    assert metric(text, "sdsaas_jobs", status="queued") == 1
    assert metric(text, "sdsaas_jobs", status="processing") == 0
    assert metric(text, "sdsaas_jobs", status="succeeded") is None  # the live ones only
    assert metric(text, "sdsaas_job_failures_window", code="timeout") == 1
    median = metric(
        text, "sdsaas_job_stage_seconds", model="sd15", stage="inference", quantile="0.5"
    )
    assert median == 2.0
    p95 = metric(text, "sdsaas_job_stage_seconds", model="sd15", stage="inference", quantile="0.95")
    assert p95 == 3.0
    assert metric(text, "sdsaas_webhook_attempts_window", outcome="succeeded") == 1
    assert metric(text, "sdsaas_webhook_attempts_window", outcome="failed") == 1


@pytest.mark.django_db
def test_without_a_token_metrics_are_served_in_debug_only(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    settings.DEBUG = False
    assert scrape(Client()).status_code == 404
    settings.DEBUG = True
    assert scrape(Client()).status_code == 200


@pytest.mark.django_db
@pytest.mark.usefixtures("local_aws")  # its credentials; the endpoint is then replaced
def test_a_scrape_does_not_wait_on_an_sqs_that_never_answers(settings: Any) -> None:
    # given two models, and SQS behind an endpoint that accepts connections and never answers
    settings.METRICS_TOKEN = "metrics-token"
    for slug in ("sd15", "sdxl"):
        WorkerPool.objects.create(model=DiffusionModelFactory(slug=slug), workers=1)
    JobFactory(status=Job.Status.QUEUED)
    with silent_listener() as port:
        settings.SQS_ENDPOINT_URL = f"http://127.0.0.1:{port}"
        # when Prometheus scrapes
        started = time.monotonic()
        response = scrape(Client(), authorization="Bearer metrics-token")
        took_s = time.monotonic() - started
    # then it is answered within the SQS wait, without the queues, with everything else
    assert response.status_code == 200
    assert took_s < metrics.SQS_WAIT_S + 1.5, took_s
    text = response.content.decode()
    assert metric(text, "sdsaas_queue_messages", model="sd15", state="visible") is None
    assert metric(text, "sdsaas_pool_workers", model="sdxl") == 1
    assert metric(text, "sdsaas_jobs", status="queued") == 1


@pytest.mark.parametrize(("n", "rank"), [(1, 1), (3, 3), (20, 19), (21, 20), (100, 95)])
def test_the_p95_is_the_nearest_rank(n: int, rank: int) -> None:
    assert metrics._p95([float(v) for v in range(n, 0, -1)]) == rank
