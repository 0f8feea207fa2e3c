"""ECS task scale-in protection around a worker's jobs (gpu_worker/protection.py), against a
loopback stand-in for the ECS agent's endpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from gpu_worker.protection import EcsAgent, ScaleInProtection
from tests.support.aws_endpoints import RecordingEcsAgent

IDLE_S = 0.3
JOB_BOUND_S = 1800 + 25  # the default time limit and stop grace


WORKER = "gpu-a"


@pytest.fixture
def agent() -> Iterator[RecordingEcsAgent]:
    stand_in = RecordingEcsAgent()
    yield stand_in
    # a protection left on is cleared within the idle time, not tried again after the test
    stand_in.down = False
    wait_until(lambda: not stand_in.protected(WORKER))
    stand_in.close()


def protection_of(agent: RecordingEcsAgent) -> ScaleInProtection:
    return ScaleInProtection(EcsAgent(agent.uri(WORKER)), job_bound_s=JOB_BOUND_S, idle_s=IDLE_S)


def wait_until(condition: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_job_is_protected_before_it_runs_and_cleared_once_the_worker_is_idle(
    agent: RecordingEcsAgent,
) -> None:
    protection = protection_of(agent)
    # when a job runs, the task is protected for the job's bound before the job's work
    with protection.busy():
        assert agent.protected(WORKER)
        [put] = agent.puts
        assert (put.enabled, put.minutes) == (True, 32)
    # then, idle for the idle time, the protection is cleared
    assert agent.protected(WORKER)
    wait_until(lambda: not agent.protected(WORKER))
    assert agent.states(WORKER) == [True, False]


def test_jobs_back_to_back_keep_one_protection_and_a_call_per_idle_time_not_per_job(
    agent: RecordingEcsAgent,
) -> None:
    protection = protection_of(agent)
    # when ten jobs follow each other closer than the idle time (a backlog, taken ahead)
    for _ in range(10):
        with protection.busy():
            pass
    # then one protection covered them all, cleared once after the last
    wait_until(lambda: not agent.protected(WORKER))
    time.sleep(IDLE_S * 2)
    assert agent.states(WORKER) == [True, False]
    # and the next job is protected again
    with protection.busy():
        assert agent.states(WORKER) == [True, False, True]


def test_a_protection_about_to_run_out_is_renewed_at_the_next_job(agent: RecordingEcsAgent) -> None:
    # given jobs of at most a minute: each protection is given 2 min
    now = [1000.0]
    protection = ScaleInProtection(
        EcsAgent(agent.uri(WORKER)), job_bound_s=60, idle_s=IDLE_S, clock=lambda: now[0]
    )
    with protection.busy():
        assert agent.puts[0].minutes == 2
    # when the next job starts while a minute or more is left, then nothing is sent
    now[0] += 60
    with protection.busy():
        assert agent.states(WORKER) == [True]
    # and when less than a job's bound is left, then the protection is renewed first
    now[0] += 0.5
    with protection.busy():
        assert agent.states(WORKER) == [True, True]


def test_an_agent_that_fails_leaves_the_job_running_and_the_next_job_tries_again(
    agent: RecordingEcsAgent, caplog: pytest.LogCaptureFixture
) -> None:
    protection = protection_of(agent)
    agent.down = True
    ran = False
    with caplog.at_level(logging.WARNING, logger="gpu_worker.protection"), protection.busy():
        ran = True
    assert ran and not agent.protected(WORKER)
    assert "could not be protected from scale-in" in caplog.text
    assert "500" in caplog.text
    # nothing to clear: it never was protected
    time.sleep(IDLE_S * 2)
    assert len(agent.puts) == 1
    # when the agent is back, the next job is protected
    agent.down = False
    with protection.busy():
        assert agent.protected(WORKER)


def test_a_clear_that_fails_is_tried_again_while_the_worker_stays_idle(
    agent: RecordingEcsAgent, caplog: pytest.LogCaptureFixture
) -> None:
    # given a worker protected for a job
    protection = protection_of(agent)
    with protection.busy():
        pass
    # when the agent fails the clear once the worker is idle (and answers again later)
    agent.down = True
    with caplog.at_level(logging.WARNING, logger="gpu_worker.protection"):
        wait_until(lambda: "could not be cleared (trying again" in caplog.text)
    assert agent.states(WORKER) == [True, False]
    agent.down = False
    # then, with no further job, the clear is tried again and the task is unprotected
    wait_until(lambda: not agent.protected(WORKER))
    assert agent.states(WORKER) == [True, False, False]


def test_a_worker_that_starts_clears_a_protection_its_task_may_still_hold(
    agent: RecordingEcsAgent,
) -> None:
    # given a task protected by a process before this one (started again in place mid-job)
    EcsAgent(agent.uri(WORKER)).set_protection(enabled=True, expires_in_minutes=32)
    assert agent.protected(WORKER)
    # when the new process starts, with no job
    protection_of(agent).at_start()
    # then the task is unprotected at once, and a job started then is protected again
    wait_until(lambda: not agent.protected(WORKER))
    restarted = protection_of(agent)
    restarted.at_start()
    with restarted.busy():
        assert agent.protected(WORKER)
    assert agent.states(WORKER)[-1] is True


def test_an_unreachable_agent_is_a_warning_within_the_client_timeouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = RecordingEcsAgent()
    url = gone.uri(WORKER)
    gone.close()
    protection = ScaleInProtection(EcsAgent(url), job_bound_s=JOB_BOUND_S, idle_s=IDLE_S)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gpu_worker.protection"), protection.busy():
        pass
    assert time.monotonic() - started < 3.5
    assert "the ECS agent is unreachable" in caplog.text


def test_off_without_an_agent() -> None:
    protection = ScaleInProtection(None, job_bound_s=JOB_BOUND_S, idle_s=IDLE_S)
    with protection.busy():
        pass  # no call anywhere, nothing raised
