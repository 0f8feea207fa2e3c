"""The GPU <-> control contract: what one side encodes, the other decodes, across releases.

Messages go through the real queue (the control plane publishes to the local SQS) or through
kombu's JSON serializer (as Celery sends an event), then are decoded by the other side's code.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest
from django.db import OperationalError
from kombu.serialization import dumps, loads

from jobs import tasks
from jobs.models import Job, JobEvent
from jobs.services.dispatch import job_message
from sdsaas import contract
from sdsaas.broker.sqs import model_queue_name
from sdsaas.celery import app as celery_app
from sdsaas.contract import (
    CONTRACT_VERSION,
    EVENTS,
    Event,
    FailureCode,
    GenerationInput,
    JobFailed,
    JobMessage,
    JobPreempted,
    JobProgress,
    JobReceived,
    JobStarted,
    JobSucceeded,
    OutputFormat,
    Scheduler,
    event_from_wire,
    events_to_wire,
)
from tests.support.factories import (
    DiffusionModelFactory,
    LoraFactory,
    PlanFactory,
    TenantFactory,
    UploadFactory,
    api_client_for,
)

pytestmark = [pytest.mark.usefixtures("local_aws"), pytest.mark.django_db(transaction=True)]


def over_the_wire(data: dict[str, Any]) -> dict[str, Any]:
    """Encoded and decoded as Celery does it (kombu's JSON serializer)."""
    content_type, encoding, body = dumps(data, serializer="json")
    decoded: dict[str, Any] = loads(body, content_type, encoding)
    return decoded


def submit_and_receive(local_aws: Any, body: dict[str, Any]) -> tuple[Job, dict[str, Any]]:
    """Submit through the API; the job and its message as a GPU worker receives it."""
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=5))
    response = api_client_for(tenant).post("/v1/jobs", body, format="json")
    assert response.status_code == 202, response.json()
    (task,) = local_aws.drain_tasks(model_queue_name("tiny"))
    return Job.objects.get(public_id=response.json()["id"]), task["kwargs"]["job"]


def test_the_job_message_the_control_plane_publishes_is_what_the_worker_decodes(
    local_aws: Any,
) -> None:
    # given a model with a LoRA, and a txt2img job using it published to the model's queue
    DiffusionModelFactory(slug="tiny")
    LoraFactory(slug="ink", family="sd15", default_weight=0.7)
    job, wire = submit_and_receive(
        local_aws,
        {"model": "tiny", "prompt": "a fox", "loras": [{"slug": "ink"}], "output_format": "webp"},
    )
    # when the worker decodes what it received
    message = JobMessage.from_wire(wire)
    # then it is the message the control plane built, typed, at this release's version
    assert message == job_message(job=job)
    assert message.v == wire["v"] == CONTRACT_VERSION
    assert message.input.scheduler in Scheduler
    assert message.input.output_format is OutputFormat.WEBP
    assert [(lora.slug, lora.weight) for lora in message.loras] == [("ink", 0.7)]
    # and the input it runs is the job's input as the API shows it
    assert message.input.to_wire() == job.input
    assert GenerationInput.from_wire(job.input) == message.input


def test_an_img2img_message_carries_its_image_and_strength(local_aws: Any) -> None:
    DiffusionModelFactory(slug="tiny")
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=5))
    tenant_upload = UploadFactory(tenant=tenant)
    body = {"model": "tiny", "prompt": "a fox", "image": tenant_upload.public_id}
    response = api_client_for(tenant).post("/v1/jobs", body, format="json")
    assert response.status_code == 202, response.json()
    (task,) = local_aws.drain_tasks(model_queue_name("tiny"))
    message = JobMessage.from_wire(task["kwargs"]["job"])
    assert message.kind == "img2img"
    assert message.init_image_key == tenant_upload.storage_key
    assert (message.input.image, message.input.strength) == (tenant_upload.public_id, 0.8)


def test_a_message_with_fields_of_a_newer_release_is_read_by_this_one(local_aws: Any) -> None:
    # given a message as a newer control plane might write it: new fields at every level
    DiffusionModelFactory(slug="tiny")
    job, wire = submit_and_receive(local_aws, {"model": "tiny", "prompt": "a fox"})
    newer = {
        **wire,
        "v": CONTRACT_VERSION + 1,
        "priority": "high",
        "input": {**wire["input"], "clip_skip": 2},
        "model": {**wire["model"], "dtype": "bfloat16"},
    }
    # when this release's worker decodes it, then it reads what it knows and ignores the rest
    message = JobMessage.from_wire(newer)
    assert dataclasses.replace(message, v=CONTRACT_VERSION) == job_message(job=job)
    assert message.v == CONTRACT_VERSION + 1


def test_a_message_of_the_release_before_versioning_is_read_as_version_1(local_aws: Any) -> None:
    DiffusionModelFactory(slug="tiny")
    job, wire = submit_and_receive(local_aws, {"model": "tiny", "prompt": "a fox"})
    older = {name: value for name, value in wire.items() if name not in {"v", "time_limit_s"}}
    message = JobMessage.from_wire(older)
    assert (message.v, message.time_limit_s, message.job_id) == (1, None, job.public_id)


EXAMPLES: dict[type[Event], Event] = {
    JobReceived: JobReceived("job_x", 2),
    JobStarted: JobStarted("job_x", 2, load_s=1.25),
    JobProgress: JobProgress("job_x", 2, step=3, total=30),
    JobSucceeded: JobSucceeded(
        "job_x", 2, output_keys=["tenants/1/jobs/job_x/0.png"], metrics={"queue_s": 0.5}
    ),
    JobFailed: JobFailed("job_x", 2, code=FailureCode.TIMEOUT, message="too long"),
    JobPreempted: JobPreempted("job_x", 2),
}


@pytest.mark.parametrize("kind", EVENTS, ids=lambda kind: kind.__name__)
def test_every_event_decodes_to_itself_after_the_wire(kind: type[Event]) -> None:
    event = EXAMPLES[kind]
    assert kind.from_wire(over_the_wire(event.to_wire())) == event
    # and each has its own control task, registered under the contract's name
    assert celery_app.tasks[kind.TASK].name == kind.TASK


def test_every_task_the_contract_names_for_the_control_plane_is_registered_by_a_worker() -> None:
    # given the tasks a control-plane worker finds, as `celery worker -A sdsaas` does at start
    celery_app.loader.import_default_modules()
    # then every task name of the contract but the GPU's has a task behind it
    names = {value for name, value in vars(contract).items() if name.startswith("TASK_")} - {
        contract.TASK_GPU_GENERATE
    }
    assert sorted(names - set(celery_app.tasks)) == []


def test_events_sent_together_decode_to_themselves_and_an_unknown_kind_to_none() -> None:
    events = list(EXAMPLES.values())
    wire = over_the_wire({"events": [*events_to_wire(events), {"kind": "overheated", "v": 9}]})
    assert [event_from_wire(data) for data in wire["events"]] == [*events, None]


def test_a_failure_code_this_release_does_not_know_is_an_internal_error_naming_it() -> None:
    wire = {"job_id": "job_x", "attempt": 1, "code": "gpu_fell_off", "message": "ouch", "v": 9}
    event = JobFailed.from_wire(wire)
    assert (event.code, event.message) == (FailureCode.INTERNAL_ERROR, "gpu_fell_off: ouch")


def run_job_to_processing(local_aws: Any, *, version_fields: dict[str, Any]) -> Job:
    DiffusionModelFactory(slug="tiny")
    job, _wire = submit_and_receive(local_aws, {"model": "tiny", "prompt": "a fox"})
    received = {"job_id": job.public_id, "attempt": 1, **version_fields}
    tasks.job_received(**over_the_wire(received))
    return job


def test_events_with_fields_of_a_newer_worker_are_applied(local_aws: Any) -> None:
    # given a job a newer worker received
    job = run_job_to_processing(
        local_aws, version_fields={"v": CONTRACT_VERSION + 1, "gpu": "h200"}
    )
    # when it reports started and succeeded with fields this release does not know
    extra = {"v": CONTRACT_VERSION + 1, "gpu_temperature_c": 71}
    started = JobStarted(job.public_id, 1, load_s=0.5).to_wire()
    tasks.job_started(**over_the_wire({**started, **extra}))
    succeeded = JobSucceeded(
        job.public_id,
        1,
        output_keys=[f"tenants/{job.tenant_id}/jobs/{job.public_id}/0.png"],
        metrics={"inference_s": 1.0},
    ).to_wire()
    tasks.job_succeeded(**over_the_wire({**succeeded, **extra}))
    # then the job succeeded as with this release's worker, and the delivery names its version
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.output_keys == succeeded["output_keys"]
    received = JobEvent.objects.get(job=job, kind="received")
    assert received.detail == {"contract": CONTRACT_VERSION + 1}


def test_events_sent_together_are_applied_in_order_past_an_unknown_kind_and_a_failing_one(
    local_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a received job, and progress that fails to apply once (the database refused it)
    job = run_job_to_processing(local_aws, version_fields={})
    calls: dict[str, int] = {"started": 0, "progress": 0}
    mark_started, mark_progress = (
        tasks.lifecycle.job_mark_started,
        tasks.lifecycle.job_mark_progress,
    )

    def started(**fields: Any) -> bool:
        calls["started"] += 1
        return mark_started(**fields)

    def refused_once(**fields: Any) -> bool:
        calls["progress"] += 1
        if calls["progress"] == 1:
            raise OperationalError("the database refused")
        return mark_progress(**fields)

    monkeypatch.setattr(tasks.lifecycle, "job_mark_started", started)
    monkeypatch.setattr(tasks.lifecycle, "job_mark_progress", refused_once)
    key = f"tenants/{job.tenant_id}/jobs/{job.public_id}/0.png"
    together = [
        JobStarted(job.public_id, 1, load_s=0.5),
        JobProgress(job.public_id, 1, step=1, total=2),
        JobSucceeded(job.public_id, 1, output_keys=[key], metrics={"inference_s": 1.0}),
    ]
    wire = events_to_wire(together)
    wire.insert(1, {"kind": "overheated", "job_id": job.public_id, "attempt": 1, "v": 9})
    # when the worker's events arrive as one task (run eagerly, its retry too)
    tasks.job_events.apply(kwargs=over_the_wire({"events": wire})).get()
    # then the ones past the unknown kind and the failing one were applied, and the task was
    # tried again with the failed one alone
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.output_keys == [key]
    assert JobEvent.objects.filter(job=job, kind="started").exists()
    assert calls == {"started": 1, "progress": 2}


def test_an_outcome_sent_alone_is_applied_on_a_retry_after_the_database_failed_it(
    local_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a received job whose success fails to apply once (the database away a moment)
    job = run_job_to_processing(local_aws, version_fields={})
    mark_succeeded, calls = tasks.lifecycle.job_mark_succeeded, []

    def refused_once(**fields: Any) -> bool:
        calls.append(fields["job_public_id"])
        if len(calls) == 1:
            raise OperationalError("the server closed the connection unexpectedly")
        return mark_succeeded(**fields)

    monkeypatch.setattr(tasks.lifecycle, "job_mark_succeeded", refused_once)
    key = f"tenants/{job.tenant_id}/jobs/{job.public_id}/0.png"
    succeeded = JobSucceeded(job.public_id, 1, output_keys=[key], metrics={"inference_s": 1.0})
    # when it arrives as its own task (run eagerly, its retry too)
    tasks.job_succeeded.apply(kwargs=over_the_wire(succeeded.to_wire())).get()
    # then the retry applied it: the job succeeded
    job.refresh_from_db()
    assert (job.status, job.output_keys) == (Job.Status.SUCCEEDED, [key])
    assert calls == [job.public_id, job.public_id]


def test_an_event_that_fails_for_a_bug_is_not_tried_again(
    local_aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a received job whose success cannot be applied for a reason that will not pass
    job = run_job_to_processing(local_aws, version_fields={})
    calls: list[str] = []

    def broken(**fields: Any) -> bool:
        calls.append(fields["job_public_id"])
        raise RuntimeError("a bug")

    monkeypatch.setattr(tasks.lifecycle, "job_mark_succeeded", broken)
    succeeded = JobSucceeded(job.public_id, 1, output_keys=[], metrics={})
    # when it arrives alone, and together with others, then each fails once, without a retry
    alone = tasks.job_succeeded.apply(kwargs=over_the_wire(succeeded.to_wire()))
    together = tasks.job_events.apply(kwargs=over_the_wire({"events": events_to_wire([succeeded])}))
    assert alone.failed() and together.successful()
    assert calls == [job.public_id, job.public_id]


def test_a_worker_of_the_release_before_versioning_is_told_apart(local_aws: Any) -> None:
    # given a job received by a worker that sends its events without a version
    job = run_job_to_processing(local_aws, version_fields={})
    # then the delivery is recorded as version 1
    assert JobEvent.objects.get(job=job, kind="received").detail == {"contract": 1}


def test_the_contract_imports_nothing_of_django_or_of_either_side() -> None:
    probe = (
        "import sys, sdsaas.contract; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'django', 'celery', 'kombu', 'boto3', 'jobs', 'tenants', 'gpu_worker', 'torch'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
