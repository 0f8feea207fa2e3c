"""Bounds a running job in time, whatever its step time: the job watchdog.

The runner checks for cancel, the stop grace and the time limit between denoising steps, which
is enough while steps are short. A step can take longer than any of those bounds (a large image
on a slow device), and loading a model or uploading has no steps at all. So a daemon thread
watches the job from receive to report:

1. Every CHECK_S it decides whether the job must end: the job's time limit passed (`timeout`),
   the worker's stop grace passed (`preempted`), or the job was canceled (`canceled`). Whether
   it was canceled is asked of storage by a thread of its own, so that a slow answer (S3 having
   trouble: up to a minute and a half a call) never holds the time limit or the stop back.
2. The runner sees the decision at its next step and ends the job in-process, as it always did.
3. If the job still runs INTERRUPT_WAIT_S later, nothing in-process will end it soon: the thread
   claims the job's outcome (so the runner can no longer report anything), settles it (an event
   and the message: see `gpu_worker.tasks.abandon_job`), and ends the process. A worker that is not
   stopping starts again in the same process (exec), with its GPU memory freed, and takes the
   next job; a stopping one exits.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from django.core.files.storage import Storage

from gpu_worker.retry import skip_during_outage

logger = logging.getLogger(__name__)

Reason = Literal["timeout", "preempted", "canceled"]

CHECK_S = 0.2
# How long the runner has to act on a decision at a step boundary before the process is ended.
INTERRUPT_WAIT_S = 1.0
EXIT_ABANDON_FAILED = 70  # EX_SOFTWARE


@dataclass
class StopDeadline:
    """Set when the worker is told to stop (SIGTERM): jobs still running past it are handed back."""

    at: float | None = None

    def begin(self, grace_s: float) -> None:
        """The stop begins, or comes sooner: of two (SIGTERM, a spot notice), the earlier holds."""
        at = time.monotonic() + grace_s
        if self.at is None or at < self.at:
            self.at = at

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


STOP = StopDeadline()  # this worker process's


def canceled(storage: Storage, key: str) -> bool:
    """Whether the control plane wrote the job's cancel marker `key`.

    Storage away for a while: the job goes on, and is asked about again at the next check.
    """
    return skip_during_outage("cancel check", lambda: bool(storage.exists(key)), False)


class Abandoned(Exception):
    """The watchdog took the job over: the runner must report nothing."""


class JobWatchdog:
    """Context manager around the work of one job; `reason` is set once the job must end.

    `stop_passed` is asked every CHECK_S, and `canceled` as often as it answers, at most every
    CHECK_S (it may be slow: it asks storage). `abandon(reason)` runs on the watchdog's thread
    when the runner did not end the job in time; it ends the process (or, in tests, returns: the
    context then raises Abandoned). Whoever is first owns the job's outcome: the watchdog when it
    abandons, the runner when its work leaves the context (the runner then reports).
    """

    def __init__(
        self,
        *,
        time_limit_s: float,
        stop_passed: Callable[[], bool],
        canceled: Callable[[], bool],
        abandon: Callable[[Reason], None],
    ) -> None:
        self.time_limit_s = time_limit_s
        self._stop_passed = stop_passed
        self._canceled = canceled
        self._abandon = abandon
        self.reason: Reason | None = None
        self._outcome_claimed = threading.Lock()
        self._done = threading.Event()
        self._cancel_seen = threading.Event()
        # In the log context of where they were made (the job's ids): a thread starts with none.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._run,),
            name="job-watchdog",
            daemon=True,
        )
        self._cancel_thread = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._watch_cancel,),
            name="job-cancel-check",
            daemon=True,  # may be left in a slow call to storage: its answer is then not needed
        )

    def __enter__(self) -> JobWatchdog:
        self._started = time.monotonic()
        self._thread.start()
        self._cancel_thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Once this returns, the runner alone reports how the job ended."""
        self._done.set()
        claimed = self._outcome_claimed.acquire(blocking=False)
        # When the watchdog took the job over, it ends the process before this join returns.
        self._thread.join()
        if not claimed:  # `abandon` returned, which only a test's does
            raise Abandoned(self.reason)

    def _decide(self) -> Reason | None:
        if time.monotonic() - self._started >= self.time_limit_s:
            return "timeout"
        if self._stop_passed():
            return "preempted"
        return "canceled" if self._cancel_seen.is_set() else None

    def _watch_cancel(self) -> None:
        while not self._done.wait(CHECK_S):
            try:
                if self._canceled():
                    self._cancel_seen.set()
                    return
            except Exception:  # asked again at the next check; the thread must not die of it
                logger.exception("the cancel check failed")

    def _run(self) -> None:
        decided_at = 0.0
        while not self._done.wait(CHECK_S):
            if self.reason is None:
                self.reason = self._decide()
                if self.reason is not None:
                    logger.info("the job must end (%s)", self.reason)
                    decided_at = time.monotonic()
                continue
            if time.monotonic() - decided_at < INTERRUPT_WAIT_S:
                continue
            if not self._outcome_claimed.acquire(blocking=False):
                return  # the job's work is over: the runner reports it
            logger.warning(
                "the job did not end within %ss of %s (a long step, a load or an upload): "
                "the worker settles it and ends its process",
                INTERRUPT_WAIT_S,
                self.reason,
            )
            try:
                self._abandon(self.reason)
            except BaseException:  # the runner must not go on with a job it no longer owns
                logger.exception("the job could not be settled: the worker exits")
                os._exit(EXIT_ABANDON_FAILED)
            return
