"""The scaling policy (jobs/scaling.py) on constructed inputs: how many workers a model's pool
needs, and how the pool follows the need (out at once, in after the scale-in delay, to zero after
the keep-alive)."""

from __future__ import annotations

import pytest

from jobs.scaling import Backlog, PoolState, ScalingPolicy, seconds_per_job

POLICY = ScalingPolicy(
    acceptable_wait_s=30,
    default_seconds_per_job=3,
    keep_alive_s=300,
    scale_in_delay_s=60,
    max_workers=8,
)


def needed(visible: int = 0, in_flight: int = 0, unpublished: int = 0, per_job: float = 3) -> int:
    backlog = Backlog(visible=visible, in_flight=in_flight, unpublished=unpublished)
    return POLICY.workers_needed(backlog, seconds_per_job=per_job)


def test_no_work_needs_no_worker_and_one_new_job_needs_one() -> None:
    assert needed() == 0
    assert needed(visible=1) == 1
    assert needed(unpublished=1) == 1  # admitted, its publish not done yet


def test_the_target_backlog_per_worker_is_the_acceptable_wait_over_the_measured_job_time() -> None:
    # 30 s of acceptable wait at 3 s a job: one worker per 10 jobs
    assert POLICY.target_backlog_per_worker(3) == 10
    assert needed(visible=10) == 1 and needed(visible=11) == 2 and needed(visible=40) == 4
    # slower jobs (measured 6 s): twice the workers for the same backlog
    assert needed(visible=40, per_job=6) == 8
    # a job longer than the acceptable wait: a worker per job, never a fraction of one
    assert POLICY.target_backlog_per_worker(45) == 1
    assert needed(visible=3, per_job=45) == 3


def test_in_flight_messages_keep_their_workers() -> None:
    # 30 jobs being run and nothing visible: queue depth alone would say zero and stop them
    assert needed(in_flight=30) == 3
    # every part of the backlog counts the same
    assert needed(visible=10, in_flight=10, unpublished=10) == 3


def test_the_pool_is_capped_per_model() -> None:
    assert needed(visible=10_000) == POLICY.max_workers


def test_the_pool_grows_at_once_from_zero_and_when_the_need_grows() -> None:
    pool = POLICY.next_pool(PoolState(), needed=1, now=0)
    assert pool == PoolState(workers=1, hold_until=60, warm_until=300)
    pool = POLICY.next_pool(pool, needed=5, now=10)
    assert pool.workers == 5


def test_the_pool_shrinks_to_the_need_only_after_the_scale_in_delay() -> None:
    # given a pool of 4 whose need was last 4 at t=100
    pool = POLICY.next_pool(PoolState(workers=4, hold_until=0), needed=4, now=100)
    # when the need drops, the pool holds its size for the delay
    for now in (110, 130, 159):
        assert POLICY.next_pool(pool, needed=2, now=now).workers == 4
    # then it shrinks to the need, and holds that size for another delay
    smaller = POLICY.next_pool(pool, needed=2, now=160)
    assert smaller == PoolState(workers=2, hold_until=220, warm_until=460)
    assert POLICY.next_pool(smaller, needed=1, now=219).workers == 2
    assert POLICY.next_pool(smaller, needed=1, now=220).workers == 1


def test_a_pool_without_work_keeps_one_warm_worker_until_the_keep_alive_then_none() -> None:
    # given a pool of 3 whose last work was seen at t=100 (the keep-alive runs to 400)
    pool = POLICY.next_pool(PoolState(), needed=3, now=100)
    # when no work comes, the workers above one go after the scale-in delay
    pool = POLICY.next_pool(pool, needed=0, now=160)
    assert pool.workers == 1
    # the last one stays through the keep-alive since the last work, and goes then
    assert POLICY.next_pool(pool, needed=0, now=399).workers == 1
    assert POLICY.next_pool(pool, needed=0, now=400).workers == 0
    # a job in between restarts the keep-alive
    pool = POLICY.next_pool(pool, needed=1, now=390)
    assert POLICY.next_pool(pool, needed=0, now=689).workers == 1
    assert POLICY.next_pool(pool, needed=0, now=690).workers == 0


def test_the_last_worker_goes_when_the_keep_alive_ends_even_within_a_scale_in_delay() -> None:
    # given a pool of 2 that shrank to its warm worker at t=250, whose last work was at t=0
    pool = POLICY.next_pool(PoolState(), needed=2, now=0)
    pool = POLICY.next_pool(pool, needed=0, now=250)
    assert pool.workers == 1 and pool.hold_until == 310
    # when the keep-alive ends at t=300, inside the delay the shrink started, then it is gone
    assert POLICY.next_pool(pool, needed=0, now=299).workers == 1
    assert POLICY.next_pool(pool, needed=0, now=300).workers == 0


def test_a_need_that_reaches_the_pool_again_restarts_the_scale_in_delay() -> None:
    pool = PoolState(workers=3, hold_until=60)
    pool = POLICY.next_pool(pool, needed=3, now=50)
    assert pool.hold_until == 110
    assert POLICY.next_pool(pool, needed=0, now=100).workers == 3


@pytest.mark.parametrize(
    ("recent", "expected"),
    [([], 3.0), ([2.0, 2.5, 40.0], 2.5), ([0.0, 4.0], 4.0)],
    ids=["none measured: the default", "median: a cold load does not count double", "no zeros"],
)
def test_seconds_per_job_is_the_median_of_the_recent_runs(
    recent: list[float], expected: float
) -> None:
    assert seconds_per_job(recent, default=3.0) == expected
