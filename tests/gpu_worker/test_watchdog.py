"""The job watchdog: it decides when a job must end, and takes over a job that does not end.

A worker's `abandon` ends its process; these tests' returns, so the watchdog's context raises
Abandoned instead (the runner then reports nothing). The end-to-end behaviour, with a worker
restarting in place, is in tests/e2e/test_worker_failures.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from gpu_worker import watchdog
from gpu_worker.watchdog import Abandoned, JobWatchdog, Reason


class Abandons(list[tuple[float, Reason]]):
    def __call__(self, reason: Reason) -> None:
        self.append((time.monotonic(), reason))


def never() -> bool:
    return False


def test_work_that_ignores_the_time_limit_is_abandoned_shortly_after_it() -> None:
    # given work that never looks at the watchdog (one long step)
    abandons = Abandons()
    began = time.monotonic()
    guard = JobWatchdog(time_limit_s=0.5, stop_passed=never, canceled=never, abandon=abandons)
    # when it runs past its limit, then the watchdog takes it over and the runner may not report
    with pytest.raises(Abandoned), guard:
        time.sleep(0.5 + watchdog.INTERRUPT_WAIT_S + 1.0)
    # once, for the timeout, within the limit plus the time the runner had to act
    [(at, reason)] = abandons
    assert reason == "timeout"
    assert 0.5 + watchdog.INTERRUPT_WAIT_S <= at - began <= 0.5 + watchdog.INTERRUPT_WAIT_S + 0.5


def test_work_that_ends_when_told_is_not_abandoned() -> None:
    abandons = Abandons()
    guard = JobWatchdog(time_limit_s=0.3, stop_passed=never, canceled=never, abandon=abandons)
    # when the work checks the decision between its short steps and ends on it
    with guard:
        while guard.reason is None:
            time.sleep(0.05)
    # then the runner owns the outcome, and the watchdog did nothing more
    assert guard.reason == "timeout"
    time.sleep(watchdog.INTERRUPT_WAIT_S + 0.5)
    assert abandons == []


@pytest.mark.parametrize("reason", ["preempted", "canceled"])
def test_a_stop_past_its_grace_and_a_cancel_are_decided_within_a_check(reason: Reason) -> None:
    stop, cancel = threading.Event(), threading.Event()
    guard = JobWatchdog(
        time_limit_s=60, stop_passed=stop.is_set, canceled=cancel.is_set, abandon=Abandons()
    )
    with guard:
        time.sleep(0.3)
        assert guard.reason is None
        (stop if reason == "preempted" else cancel).set()
        decided_by = time.monotonic() + watchdog.CHECK_S + 0.3
        while guard.reason is None and time.monotonic() < decided_by:
            time.sleep(0.02)
        assert guard.reason == reason


def test_a_failing_cancel_check_does_not_stop_the_watchdog() -> None:
    calls = 0

    def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("storage said no")
        return True

    guard = JobWatchdog(time_limit_s=60, stop_passed=never, canceled=flaky, abandon=Abandons())
    with guard:
        deadline = time.monotonic() + 5 * watchdog.CHECK_S + 1
        while guard.reason is None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert guard.reason == "canceled"
    assert calls == 3


def test_a_slow_cancel_check_holds_back_neither_the_stop_nor_the_time_limit() -> None:
    # given storage that takes seconds to answer each cancel check (S3 having trouble)
    answered = threading.Event()

    def slow() -> bool:
        answered.wait(5)
        return False

    stop = threading.Event()
    guard = JobWatchdog(
        time_limit_s=0.6, stop_passed=stop.is_set, canceled=slow, abandon=Abandons()
    )
    try:
        with guard:
            # when the stop grace passes while a check waits, then the job must end at once
            time.sleep(0.3)
            stop.set()
            deadline = time.monotonic() + 2 * watchdog.CHECK_S + 0.3
            while guard.reason is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert guard.reason == "preempted"
        # and, with no stop, its time limit ends it while a check waits as well
        stop.clear()
        with JobWatchdog(
            time_limit_s=0.4, stop_passed=stop.is_set, canceled=slow, abandon=Abandons()
        ) as timed:
            deadline = time.monotonic() + 0.4 + 2 * watchdog.CHECK_S + 0.3
            while timed.reason is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert timed.reason == "timeout"
    finally:
        answered.set()


def test_work_that_ends_in_time_leaves_no_decision() -> None:
    abandons = Abandons()
    with JobWatchdog(time_limit_s=5, stop_passed=never, canceled=never, abandon=abandons) as guard:
        time.sleep(0.3)
    assert guard.reason is None
    assert abandons == []
