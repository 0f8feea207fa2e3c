"""GPU workers on elastic capacity (issue 13): a worker protects its ECS task from scale-in
while it holds a job, and hands its job back on a spot interruption notice, for another worker
to run. Real worker processes on the `pool` of tests/e2e/conftest.py; the ECS agent and the
instance metadata are loopback stand-ins (tests/support/aws_endpoints.py)."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from jobs.models import Job
from tenants.models import UsageRecord
from tests.e2e.conftest import (
    E2E_WAIT_TIME_S,
    LONG_JOB,
    SHORT_JOB,
    STOP_MARGIN_S,
    Pool,
    finished,
    wait_for,
)
from tests.support.aws import free_port
from tests.support.aws_endpoints import FakeImds, RecordingEcsAgent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]

IDLE_S = 1


@pytest.fixture
def agent() -> Iterator[RecordingEcsAgent]:
    stand_in = RecordingEcsAgent()
    yield stand_in
    stand_in.close()


@pytest.fixture
def imds() -> Iterator[Callable[[], FakeImds]]:
    """Instance metadata stand-ins, one per instance, as many as the test asks for."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(FakeImds())


def test_a_worker_is_protected_from_scale_in_while_it_runs_a_job_and_cleared_when_idle(
    pool: Pool, agent: RecordingEcsAgent
) -> None:
    # given a worker on ECS (the agent's URI in its environment, its logs in JSON and its
    # operators' endpoints served, as there), idle
    ops_port = free_port()
    pool.start_worker(
        ECS_AGENT_URI=agent.uri(pool.worker),
        SDSAAS_GPU_PROTECTION_IDLE_S=str(IDLE_S),
        SDSAAS_GPU_SPOT_POLL_S="0",
        SDSAAS_LOG_FORMAT="json",
        SDSAAS_WORKER_OPS_PORT=str(ops_port),
    )
    pool.wait_ready(pool.worker)
    # (a worker that starts clears what a process before it may have left on its task)
    wait_for(lambda: agent.states(pool.worker) == [False], 10, "the clear at start")
    # when it runs a job
    job_id = pool.submit(**SHORT_JOB)
    job = finished(pool.client, job_id)
    assert job["status"] == "succeeded", pool.log()
    # then its task was protected before the job started, and the protection outlived the job
    ran = Job.objects.get(public_id=job_id)
    assert ran.started_at is not None and ran.completed_at is not None
    protect = agent.puts[1]
    assert protect.enabled and protect.minutes >= 1
    assert protect.at < ran.started_at.timestamp()
    # and once idle, it was cleared: one call each way for the job
    wait_for(
        lambda: agent.states(pool.worker) == [False, True, False],
        10 + IDLE_S,
        "the protection cleared",
    )
    [clear] = agent.puts[2:]
    assert clear.at >= ran.completed_at.timestamp()
    assert not agent.protected(pool.worker)
    # and its log records are JSON objects (what else it prints is Celery's start banner and
    # Python's warnings); those of the job name it, its attempt and task
    lines = pool.log().splitlines()
    assert not [line for line in lines if re.match(r"\[?\d{4}-\d\d-\d\d[ T]\d\d:", line)]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    of_job = [r for r in records if r.get("job_id") == job_id]
    assert any(r["message"] == f"job {job_id} attempt 1 (contract v2)" for r in of_job), of_job
    assert {(r["attempt"], r["task"]) for r in of_job} == {(1, "gpu.generate")}
    # and its metrics count the run and the weights it holds
    ops = f"http://127.0.0.1:{ops_port}"
    with urllib.request.urlopen(f"{ops}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert 'sdsaas_worker_jobs_total{outcome="succeeded"} 1.0' in text, text
    [held] = re.findall(r"^sdsaas_worker_pipeline_bytes (\S+)$", text, re.M)
    assert float(held) > 0
    # and it is ready until it begins to stop, then not (while it waits out its open poll)
    assert status_of(f"{ops}/readyz") == 200 and status_of(f"{ops}/healthz") == 200
    pool.workers.processes[pool.worker].terminate()
    wait_for(lambda: status_of(f"{ops}/readyz") == 503, 10, "not ready once stopping")


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_spot_notice_hands_the_running_job_back_and_another_worker_completes_it(
    pool: Pool, imds: Callable[[], FakeImds]
) -> None:
    # given two workers on spot instances (the metadata asked every second), both ready before
    # the job, so the one that is not noticed is there to take it back whatever the machine's load
    names = (pool.worker, f"{pool.worker}-b")
    metadata = {name: imds() for name in names}
    for name, fake in metadata.items():
        pool.start_worker(name, SDSAAS_GPU_SPOT_POLL_S="1", SDSAAS_GPU_IMDS_URL=fake.url)
    pool.wait_ready(*names)
    job_id = pool.submit(**LONG_JOB)
    spot = pool.holder(job_id, 1, names)
    [other] = [name for name in names if name != spot]
    pool.wait_processing(job_id)
    # when EC2 gives its instance the two-minute notice, here with 21 s left: 1 s of grace after
    # the 20 s kept for the hand-back (gpu_worker/spot.py), however long the configured grace (25 s)
    noticed = time.monotonic()
    metadata[spot].notice(in_s=21)

    # then the spot worker hands the job back within its poll, the grace and the margin
    def handed_back() -> bool:
        return pool.job(job_id).events.filter(kind="preempted", attempt=1).exists()

    wait_for(handed_back, 1 + 1 + STOP_MARGIN_S, "the job handed back", interval=0.05)
    stopped_s = time.monotonic() - noticed
    assert "spot interruption notice (terminate" in pool.log(spot)
    # and exits (once the long poll it had open has answered: E2E_WAIT_TIME_S at most)
    assert pool.workers.wait_exit(spot, timeout=E2E_WAIT_TIME_S + 20) == 0, pool.log(spot)
    # and the other worker completes the job as attempt 2, metered once
    job = finished(pool.client, job_id)
    done_s = time.monotonic() - noticed
    print(f"job handed back {stopped_s:.1f}s after the notice; done on another after {done_s:.1f}s")
    assert (job["status"], job["attempt"]) == ("succeeded", 2), pool.log(other)
    assert f"job {job_id} attempt 2" in pool.log(other)
    assert UsageRecord.objects.filter(job__public_id=job_id).count() == 1
