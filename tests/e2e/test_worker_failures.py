"""GPU workers that die, stop, run out of memory or get bad input; the jobs they held.

Real processes: the control worker of the session, and GPU workers per test on a model queue of
their own (CPU, tiny model; the `pool` of tests/e2e/conftest.py), with a short base visibility
timeout (extended by the workers' heartbeat while they hold a job) so that redelivery takes
seconds. Jobs canceled on such workers: test_worker_cancel.py.
"""

from __future__ import annotations

import re
import resource
import signal
import time
from typing import Any

import pytest

from jobs.models import DiffusionModel, Job
from jobs.services.reconcile import jobs_sweep_dead_lettered
from sdsaas.broker.sqs import decode_task, ensure_model_queue, sqs_client
from tenants.models import UsageRecord
from tests.e2e.conftest import (
    LONG_JOB,
    LONG_STEP_JOB,
    LONGER_JOB,
    SHORT_JOB,
    STOP_MARGIN_S,
    VISIBILITY_S,
    Pool,
    finished,
    log_time,
    wait_for,
)
from tests.support.api import credits
from tests.support.factories import stored_upload

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]


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
    recovery_s = log_time(pool.log(other), f"job {job_id} attempt 2") - killed_at
    print(f"recovered {recovery_s:.1f}s after SIGKILL (base visibility timeout {VISIBILITY_S}s)")
    assert recovery_s < 2 * VISIBILITY_S
    # and it succeeds as attempt 2, its image metered once, each delivery in its history
    job = finished(pool.client, job_id)
    assert (job["status"], job["attempt"]) == ("succeeded", 2), pool.log(other)
    assert UsageRecord.objects.filter(job__public_id=job_id).count() == 1
    assert credits(pool.tenant) == (1, 0)
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
    # given a model whose jobs may run 1 s in all (a step of LONG_STEP_JOB outlasts it and the
    # watchdog's wait after it by seconds), and a worker on it
    model = DiffusionModel.objects.get(slug=pool.slug)
    DiffusionModel.objects.filter(pk=model.pk).update(time_limit_base_s=1, time_limit_step_s=0)
    pool.start_worker()
    pid = pool.workers.pid(pool.worker)
    # when a job of steps of several seconds runs past the limit in its first step
    job_id = pool.submit(**LONG_STEP_JOB)
    job = finished(pool.client, job_id, timeout=90)
    # then it fails as timeout, within the limit and the stated margin of its receive
    assert (job["status"], job["error"]["code"]) == ("failed", "timeout"), pool.log()
    ran_s = log_time(pool.log(), f"job {job_id} abandoned") - log_time(
        pool.log(), f"job {job_id} attempt 1"
    )
    assert ran_s <= 1 + STOP_MARGIN_S
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
        delivered = log_time(pool.log(holder), f"job {job_id} attempt {attempt}")
        if attempt == 1:
            first_delivery = delivered
        lived_s.append(time.time() - delivered)
        pool.workers.kill(holder)
    # then the next receive dead-letters it, and the sweep fails it: besides the time its
    # workers lived, within three base timeouts (plus the sweep's interval, 15 s, where the
    # scheduler runs it; here the test sweeps continuously)
    wait_for(lambda: jobs_sweep_dead_lettered().failed, 60, "the dead-lettered job to be failed")
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
    upload = stored_upload(b"not an image any more", tenant=pool.tenant)
    bad = pool.submit(image=upload.public_id, strength=0.5, **SHORT_JOB)
    # then it fails as invalid_input
    job = finished(pool.client, bad)
    assert (job["status"], job["error"]["code"], job["attempt"]) == ("failed", "invalid_input", 1)
    # and the same worker still serves the next job, and no credit was used by the failures
    assert finished(pool.client, pool.submit(**SHORT_JOB))["status"] == "succeeded"
    assert credits(pool.tenant) == (2, 0)
