"""One job's trace across processes (sdsaas/telemetry.py): the API's submit (this process), the
GPU worker's queue wait, load, inference and upload, and the webhooks sender's delivery, all in
one trace under the submit, each process exporting its spans to one file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from integrations.webhooks.services.endpoints import endpoint_create
from jobs.models import Job
from tests.e2e.conftest import SHORT_JOB, Pool, finished, wait_for
from tests.e2e.test_webhooks import wake_sender
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]

GPU_SPANS = {"job.queue_wait", "job.load_s", "job.inference_s", "job.encode_s", "job.upload_s"}


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_job_s_trace_holds_its_submit_queue_wait_load_inference_upload_and_webhook(
    pool: Pool, receiver: Receiver, settings: Any, tmp_path: Path
) -> None:
    # given every process of the job exporting its spans to one file
    exported = tmp_path / "spans.jsonl"
    settings.OTEL_EXPORTER = f"file:{exported}"
    pool.start_worker(SDSAAS_OTEL_EXPORTER=f"file:{exported}")
    _, secret = endpoint_create(tenant=pool.tenant, url=receiver.url(), events=["job.succeeded"])
    receiver.secrets.append(secret)
    pool.workers.start_sender(
        "webhooks",
        "webhooks-traces",
        SDSAAS_WEBHOOK_ALLOW_HOSTS=receiver.host,
        SDSAAS_OTEL_EXPORTER=f"file:{exported}",
    )
    try:
        # when a job is submitted, run and announced
        job_id = pool.submit(**SHORT_JOB)
        assert finished(pool.client, job_id)["status"] == "succeeded", pool.log()
        wait_for(lambda: len(receiver.unique()) == 1, 60, "the webhook delivered")
    finally:
        pool.workers.stop("webhooks-traces", wake=wake_sender)
    # then its spans form one trace, rooted at the submit that created it
    trace_id = Job.objects.get(public_id=job_id).trace_parent.split("-")[1]
    mine = [s for s in spans(exported) if s["context"]["trace_id"] == f"0x{trace_id}"]
    by_name = {s["name"]: s for s in mine}
    assert {"job.submit", "webhook.deliver"} | GPU_SPANS <= set(by_name), sorted(by_name)
    submit = by_name["job.submit"]
    assert submit["parent_id"] is None and submit["attributes"]["job_id"] == job_id
    for name in GPU_SPANS | {"webhook.deliver"}:
        assert by_name[name]["parent_id"] == submit["context"]["span_id"], name
    # and each comes from the process that did the work
    services = {name: s["resource"]["attributes"]["service.name"] for name, s in by_name.items()}
    assert {services[name] for name in GPU_SPANS} == {"sdsaas-gpu"}
    assert services["webhook.deliver"] == "sdsaas-control"
    # and the steps follow each other in time: waited, loaded, denoised, then uploaded
    order = ["job.queue_wait", "job.load_s", "job.inference_s", "job.upload_s", "webhook.deliver"]
    ends = [by_name[name]["end_time"] for name in order]
    assert ends == sorted(ends), dict(zip(order, ends, strict=True))
