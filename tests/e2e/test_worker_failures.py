"""GPU workers that die, stop, run out of memory or get bad input, and jobs canceled on them.

Real processes: the control worker of the session, and GPU workers per test on a model queue of
their own (CPU, tiny model), with a short base visibility timeout (extended by the workers'
heartbeat while they hold a job) so that redelivery takes seconds.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import resource
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from jobs.models import DiffusionModel, Job, Upload
from jobs.services.lifecycle import jobs_fail_dead_lettered
from sdsaas.broker.sqs import decode_task, ensure_model_queue, model_queue_name, sqs_client
from tenants.models import CreditPeriod, UsageRecord
from tests.e2e.conftest import Workers, finished, wait_for
from tests.support.factories import (
    DiffusionModelFactory,
    PlanFactory,
    TenantFactory,
    api_client_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]

VISIBILITY_S = 6
# A job that must end (stop grace, time limit, cancel) ends within this of its bound, whatever
# its step time: a check (0.2 s), the runner's chance to end it (1 s), then the hand-back.
STOP_MARGIN_S = 3.0
# On the tiny model a step takes tens of milliseconds: these jobs run for seconds.
LONG_JOB = {"width": 256, "height": 256, "steps": 150, "scheduler": "euler"}
# More than 5 x VISIBILITY_S (about 50 s on two idle CPU cores, longer on busy ones).
LONGER_JOB = {"width": 1024, "height": 1024, "steps": 150, "scheduler": "euler", "num_outputs": 4}
SHORT_JOB = {"width": 64, "height": 64, "steps": 2}
# Steps of several seconds each (four 2048x2048 images): a step outlasts every bound below.
LONG_STEP_JOB = {"width": 2048, "height": 2048, "steps": 3, "num_outputs": 4, "scheduler": "euler"}


@dataclass
class Pool:
    """One model, its queue and the GPU worker serving it; a tenant with a client."""

    workers: Workers
    slug: str
    client: Any
    tenant: Any

    @property
    def queue(self) -> str:
        return model_queue_name(self.slug)

    @property
    def worker(self) -> str:
        return f"gpu-{self.slug}"

    def start_worker(self, name: str = "", **env: str) -> None:
        # The workers extend messages by the base timeout the queue was created with.
        env = {"SDSAAS_SQS_VISIBILITY_TIMEOUT": str(VISIBILITY_S), **env}
        self.workers.start_gpu(name or self.worker, queues=self.queue, **env)

    def wait_ready(self, *names: str) -> None:
        for name in names:
            wait_for(lambda n=name: " ready." in self.workers.log(n), 90, f"{name} to be ready")

    def submit(self, **fields: Any) -> str:
        body = {"model": self.slug, "prompt": "a lighthouse", **fields}
        response = self.client.post("/v1/jobs", body, format="json")
        assert response.status_code == 202, response.content
        return str(response.json()["id"])

    def job(self, job_id: str) -> Job:
        return Job.objects.get(public_id=job_id)

    def wait_processing(self, job_id: str, attempt: int = 1, timeout: float = 90) -> None:
        def running() -> bool:
            job = self.job(job_id)
            return job.status == Job.Status.PROCESSING and job.attempt == attempt

        wait_for(running, timeout, f"{job_id} to be processing as attempt {attempt}")

    def log(self, name: str = "") -> str:
        return self.workers.log(name or self.worker)

    def holder(self, job_id: str, attempt: int, names: tuple[str, ...]) -> str:
        """Which of the named workers received the job as `attempt`."""
        line = f"job {job_id} attempt {attempt}"
        return str(
            wait_for(lambda: next((n for n in names if line in self.log(n)), None), 30, line)
        )

    def deliveries(self, job_id: str) -> list[int]:
        """The attempt of each delivery, from the job's history."""
        received = self.job(job_id).events.filter(kind="received")
        return list(received.values_list("attempt", flat=True))


@pytest.fixture
def pool(workers: Workers, tiny_model_dir: Any, settings: Any) -> Any:
    settings.SQS_VISIBILITY_TIMEOUT = VISIBILITY_S
    slug = f"tiny{uuid.uuid4().hex[:6]}"
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=2, max_pixels=2048**2))
    DiffusionModelFactory(
        slug=slug, source_uri=str(tiny_model_dir), revision="tiny-1", min_side=32, max_side=2048
    )
    # The queue exists with its redrive policy and timeout before a worker would create it bare.
    ensure_model_queue(slug)
    made = Pool(workers, slug, api_client_for(tenant), tenant)
    yield made
    for name in [name for name in workers.processes if name.startswith(made.worker)]:
        workers.stop(name)


def credits(tenant: Any) -> tuple[int, int]:
    period = CreditPeriod.objects.get(tenant=tenant)
    return period.reserved, period.used


def test_kill_9_mid_job_is_taken_over_within_two_base_timeouts_metered_once(pool: Pool) -> None:
    # given two workers on the model's queue, one of them running a job
    names = (pool.worker, f"{pool.worker}-b")
    for name in names:
        pool.start_worker(name)
    pool.wait_ready(*names)
    job_id = pool.submit(**LONG_JOB)
    pool.wait_processing(job_id)
    holder = pool.holder(job_id, 1, names)
    (other,) = set(names) - {holder}
    # when that worker is killed with SIGKILL (a lost spot node: nothing acked, no heartbeat)
    killed_at = time.time()
    pool.workers.kill(holder)
    # then the other worker receives the job as attempt 2 within two base timeouts
    pool.holder(job_id, 2, (other,))
    recovery_s = _log_time(pool.log(other), f"job {job_id} attempt 2") - killed_at
    print(f"recovered {recovery_s:.1f}s after SIGKILL (base visibility timeout {VISIBILITY_S}s)")
    assert recovery_s < 2 * VISIBILITY_S
    # and it succeeds as attempt 2, its image metered once, each delivery in its history
    job = finished(pool.client, job_id)
    assert (job["status"], job["attempt"]) == ("succeeded", 2), pool.log(other)
    assert UsageRecord.objects.filter(job__public_id=job_id).count() == 1
    assert credits(pool.tenant) == (0, 1)
    assert pool.deliveries(job_id) == [1, 2]
    starts = pool.job(job_id).events.filter(kind="started").values_list("attempt", flat=True)
    assert list(starts) == [1, 2]


def test_a_job_running_five_base_timeouts_is_delivered_once_while_its_worker_lives(
    pool: Pool,
) -> None:
    # given two idle workers on the model's queue
    names = (pool.worker, f"{pool.worker}-b")
    for name in names:
        pool.start_worker(name)
    pool.wait_ready(*names)
    # when a job runs for several times the queue's visibility timeout
    job_id = pool.submit(**LONGER_JOB)
    job = finished(pool.client, job_id, timeout=300)
    holder = pool.holder(job_id, 1, names)
    (other,) = set(names) - {holder}
    ran = pool.job(job_id)
    assert ran.completed_at is not None and ran.started_at is not None
    assert (ran.completed_at - ran.started_at).total_seconds() > 5 * VISIBILITY_S
    # then it was delivered once: attempt 1, the idle worker never saw it
    assert (job["status"], job["attempt"]) == ("succeeded", 1), pool.log(holder)
    assert pool.deliveries(job_id) == [1]
    assert job_id not in pool.log(other)


def test_sigterm_past_the_grace_hands_the_job_back_as_attempt_2(pool: Pool) -> None:
    # given a worker with a 1 s stop grace, running a job that needs many seconds
    pool.start_worker(SDSAAS_GPU_STOP_GRACE_S="1")
    job_id = pool.submit(**LONG_JOB)
    pool.wait_processing(job_id)
    # when it gets SIGTERM (a spot interruption notice)
    pool.workers.processes[pool.worker].send_signal(signal.SIGTERM)
    # then it stops within the grace and a few steps, without finishing the job
    assert pool.workers.wait_exit(pool.worker, timeout=30) == 0
    history = list(pool.job(job_id).events.values_list("kind", "attempt"))
    assert ("preempted", 1) in history, history
    assert pool.job(job_id).status == Job.Status.STARTING
    # and another worker takes it at once (not after the visibility timeout) as attempt 2
    pool.start_worker()
    job = finished(pool.client, job_id)
    assert job["status"] == "succeeded", pool.log()
    assert job["attempt"] == 2
    assert UsageRecord.objects.filter(job__public_id=job_id).count() == 1


def test_sigterm_during_a_step_longer_than_the_grace_hands_the_job_back_within_the_grace(
    pool: Pool,
) -> None:
    # given a worker with a 1 s stop grace, in the first of its job's steps of several seconds
    grace_s = 1
    pool.start_worker(SDSAAS_GPU_STOP_GRACE_S=str(grace_s))
    job_id = pool.submit(**LONG_STEP_JOB)
    pool.wait_processing(job_id)
    # when it gets SIGTERM
    signaled = time.monotonic()
    pool.workers.processes[pool.worker].send_signal(signal.SIGTERM)
    # then it has handed the job back and exited within the grace and the stated margin
    assert pool.workers.wait_exit(pool.worker, timeout=30) == 0
    stopped_s = time.monotonic() - signaled
    print(f"stopped {stopped_s:.1f}s after SIGTERM with a {grace_s}s grace")
    assert stopped_s <= grace_s + STOP_MARGIN_S, pool.log()
    assert f"job {job_id} abandoned (preempted)" in pool.log()
    # and the job waits in its queue, as attempt 2, for the next worker (not invisible)
    history = list(pool.job(job_id).events.values_list("kind", "attempt"))
    assert ("preempted", 1) in history, history
    assert pool.job(job_id).status == Job.Status.STARTING
    queue_url = ensure_model_queue(pool.slug)
    [message] = sqs_client().receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    assert decode_task(message["Body"])[1]["job"]["attempt"] == 2


def test_a_job_past_its_time_limit_fails_as_timeout_and_the_worker_starts_again_for_the_next(
    pool: Pool,
) -> None:
    # given a model whose jobs may run 3 s in all, and a worker on it
    model = DiffusionModel.objects.get(slug=pool.slug)
    DiffusionModel.objects.filter(pk=model.pk).update(time_limit_base_s=3, time_limit_step_s=0)
    pool.start_worker()
    pid = pool.workers.pid(pool.worker)
    # when a job of steps of several seconds runs past the limit in its first step
    job_id = pool.submit(**LONG_STEP_JOB)
    job = finished(pool.client, job_id, timeout=90)
    # then it fails as timeout, within the limit and the stated margin of its receive
    assert (job["status"], job["error"]["code"]) == ("failed", "timeout"), pool.log()
    ran_s = _log_time(pool.log(), f"job {job_id} abandoned") - _log_time(
        pool.log(), f"job {job_id} attempt 1"
    )
    assert ran_s <= 3 + STOP_MARGIN_S
    # and its credits are released
    assert credits(pool.tenant) == (0, 0)
    # and the worker started again in the same process, and runs the next job
    DiffusionModel.objects.filter(pk=model.pk).update(
        time_limit_base_s=model.time_limit_base_s, time_limit_step_s=model.time_limit_step_s
    )
    assert finished(pool.client, pool.submit(**SHORT_JOB))["status"] == "succeeded"
    assert "restarting the worker process" in pool.log()
    assert pool.workers.processes[pool.worker].poll() is None
    assert pool.workers.pid(pool.worker) == pid


def test_sigterm_within_the_grace_finishes_the_job_and_takes_no_new_one(pool: Pool) -> None:
    # given a worker with a long grace, running a job, and a second job waiting in its queue
    pool.start_worker(SDSAAS_GPU_STOP_GRACE_S="120")
    running = pool.submit(**{**LONG_JOB, "steps": 40})
    waiting = pool.submit(**SHORT_JOB)
    pool.wait_processing(running)
    # when it gets SIGTERM
    pool.workers.processes[pool.worker].send_signal(signal.SIGTERM)
    assert pool.workers.wait_exit(pool.worker, timeout=60) == 0
    # then it finished the running job, as attempt 1, and never started the waiting one
    job = finished(pool.client, running, timeout=10)
    assert (job["status"], job["attempt"]) == ("succeeded", 1)
    assert pool.job(waiting).status == Job.Status.STARTING
    assert waiting not in pool.log()
    # and the waiting job is served by the next worker
    pool.start_worker()
    assert finished(pool.client, waiting)["status"] == "succeeded"


def test_a_job_that_kills_its_worker_every_time_fails_within_three_base_timeouts(
    pool: Pool, settings: Any
) -> None:
    # given four workers on a model queue that dead-letters a message after 3 receives
    assert settings.SQS_MAX_RECEIVES == 3
    names = tuple(f"{pool.worker}-{n}" for n in range(4))
    for name in names:
        pool.start_worker(name)
    pool.wait_ready(*names)
    job_id = pool.submit(**LONG_JOB)
    # when each worker that receives it dies (as if loading the model killed it)
    lived_s = []  # from each delivery to the death of its worker
    for attempt in (1, 2, 3):
        wait_for(lambda a=attempt: a in pool.deliveries(job_id), 60, f"delivery {attempt}")
        holder = pool.holder(job_id, attempt, names)
        delivered = _log_time(pool.log(holder), f"job {job_id} attempt {attempt}")
        if attempt == 1:
            first_delivery = delivered
        lived_s.append(time.time() - delivered)
        pool.workers.kill(holder)
    # then the next receive dead-letters it, and the sweep fails it: besides the time its
    # workers lived, within three base timeouts (plus the sweep's interval, 15 s, where the
    # scheduler runs it; here the test sweeps continuously)
    wait_for(jobs_fail_dead_lettered, 60, "the dead-lettered job to be failed")
    final_s = time.time() - first_delivery
    print(
        f"poison job failed {final_s:.1f}s after its first delivery, its workers living "
        f"{sum(lived_s):.1f}s of it (base {VISIBILITY_S}s)"
    )
    assert final_s - sum(lived_s) <= 3 * VISIBILITY_S + 2
    job = finished(pool.client, job_id, timeout=5)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    # and its history lists each delivery, its attempt counting them
    assert job["attempt"] == 3
    assert pool.deliveries(job_id) == [1, 2, 3]
    # and its credit is released, nothing metered
    assert credits(pool.tenant) == (0, 0)
    assert not UsageRecord.objects.filter(job__public_id=job_id).exists()


def _log_time(log: str, pattern: str) -> float:
    """When the worker logged a line (Celery's `[YYYY-MM-DD HH:MM:SS,mmm: ...]`, local time)."""
    match = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [^\]]*\] " + pattern, log)
    assert match, f"no log line matching {pattern!r}"
    stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def test_cancel_while_queued_never_runs_and_cancel_while_running_stops_within_2s(
    pool: Pool,
) -> None:
    # given a tenant with one slot: a long job running and a second one queued behind it
    pool.tenant.plan.max_concurrent_jobs = 1
    pool.tenant.plan.save()
    pool.start_worker()
    running = pool.submit(**LONG_JOB)
    queued = pool.submit(**SHORT_JOB)
    assert pool.job(queued).status == Job.Status.QUEUED
    # when the queued job is canceled
    assert pool.client.post(f"/v1/jobs/{queued}/cancel").json()["status"] == "canceled"
    # and the running one is canceled a second into its denoising
    pool.wait_processing(running)
    time.sleep(1)
    canceled_at = time.time()
    response = pool.client.post(f"/v1/jobs/{running}/cancel")
    # then both are canceled, their credits released
    assert response.json().get("status") == "canceled", response.json()
    stopped = wait_for(
        lambda: re.search(f"job {running} canceled during inference", pool.log()),
        10,
        "the worker to stop the canceled job",
    )
    assert stopped
    assert _log_time(pool.log(), f"job {running} canceled during inference") - canceled_at < 2.0
    assert credits(pool.tenant) == (0, 0)
    # and the queued one never reached a worker
    assert queued not in pool.log()
    assert list(pool.job(queued).events.values_list("kind", flat=True)) == [
        "created",
        "canceled",
    ]


def test_cancel_during_a_step_of_seconds_takes_effect_within_a_bound(pool: Pool) -> None:
    # given a worker in the first of its job's steps of several seconds
    pool.start_worker()
    job_id = pool.submit(**LONG_STEP_JOB)
    pool.wait_processing(job_id)
    # when the job is canceled
    canceled_at = time.time()
    assert pool.client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    # then the worker lets go of it within the stated margin, not at the end of the step
    wait_for(lambda: f"job {job_id} abandoned" in pool.log(), 30, "the job to be abandoned")
    assert _log_time(pool.log(), rf"job {job_id} abandoned \(canceled\)") - canceled_at < (
        STOP_MARGIN_S
    )
    # and it starts again for the next job
    assert finished(pool.client, pool.submit(**SHORT_JOB))["status"] == "succeeded"


def test_out_of_memory_and_an_undecodable_input_fail_final_and_the_worker_goes_on(
    pool: Pool, local_aws: Any
) -> None:
    # given a warm worker whose address space is capped 512 MiB above what it uses (the tiny
    # model's 64x64 jobs need a few MiB; four 1024x1024 images about 900 MiB)
    pool.start_worker()
    assert finished(pool.client, pool.submit(**SHORT_JOB))["status"] == "succeeded"
    pid = pool.workers.pid(pool.worker)
    with open(f"/proc/{pid}/status") as status:
        vm_kib = int(re.search(r"VmSize:\s+(\d+)", status.read()).group(1))  # type: ignore[union-attr]
    resource.prlimit(
        pid, resource.RLIMIT_AS, (vm_kib * 1024 + 512 * 1024**2, resource.RLIM_INFINITY)
    )
    # when a job needs far more memory than that
    big = pool.submit(width=1024, height=1024, num_outputs=4, steps=1)
    # then it fails as out_of_memory, at once, not retried
    job = finished(pool.client, big)
    assert (job["status"], job["error"]["code"], job["attempt"]) == ("failed", "out_of_memory", 1)
    # given an img2img job whose input image in S3 is no longer an image
    upload = pool.client.post(
        "/v1/uploads",
        {"file": ContentFile(_png(), name="in.png")},
        format="multipart",
    ).json()
    key = Upload.objects.get(public_id=upload["id"]).storage_key
    default_storage.save(key, ContentFile(b"not an image any more"))
    bad = pool.submit(image=upload["id"], strength=0.5, **SHORT_JOB)
    # then it fails as invalid_input
    job = finished(pool.client, bad)
    assert (job["status"], job["error"]["code"], job["attempt"]) == ("failed", "invalid_input", 1)
    # and the same worker still serves the next job, and no credit was used by the failures
    assert finished(pool.client, pool.submit(**SHORT_JOB))["status"] == "succeeded"
    assert credits(pool.tenant) == (0, 2)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()
