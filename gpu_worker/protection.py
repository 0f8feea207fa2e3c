"""ECS task scale-in protection: a worker that holds a job is never stopped by a scale-in.

The pool's size follows the scaling policy (jobs/scaling.py); when it shrinks, ECS stops tasks
of the service, and it stops none that is protected. So the worker protects its task through the
ECS agent (`PUT $ECS_AGENT_URI/task-protection/v1/state`) when a job arrives and clears the
protection once it has been idle for GPU_PROTECTION_IDLE_S: under a backlog, where the next job
is taken ahead, a worker stays protected from job to job without a call per job.

Each protection expires on its own after a job's time limit and stop grace (the agent's
`ExpiresInMinutes`), and is renewed at a job's start when less than that is left, so a worker
that died protected does not block a scale-in for long. Best effort: when the agent does not
answer, the job runs all the same (unprotected, as every worker was before) and the next job
tries again; a clear that fails is tried again while the worker stays idle, at growing intervals
(up to CLEAR_RETRY_MAX_S). A worker that starts (a fresh task, or one started again in place
after an abandoned job, whose old process could not clear what it had set) clears whatever
protection its task may hold (`at_start`). Off where ECS_AGENT_URI is not set (everywhere but
ECS).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

import urllib3
from django.conf import settings

logger = logging.getLogger(__name__)

PATH = "/task-protection/v1/state"
MAX_MINUTES = 2880  # the agent's bound (48 h)
CLEAR_RETRY_MAX_S = 60.0  # the longest wait between two tries of a clear that failed


class AgentError(Exception):
    """The ECS agent did not take the request; `transient`: asking again later may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class EcsAgent:
    """The one client of the ECS agent's task-protection endpoint (short timeouts, no retry:
    the caller asks again at the next job)."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rstrip("/") + PATH
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1.0, read=2.0), retries=False
        )

    def set_protection(self, *, enabled: bool, expires_in_minutes: int) -> None:
        body: dict[str, object] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = expires_in_minutes
        try:
            response = self._http.request(
                "PUT", self.url, body=json.dumps(body), headers={"Content-Type": "application/json"}
            )
        except urllib3.exceptions.HTTPError as exc:
            raise AgentError(f"the ECS agent is unreachable: {exc}", transient=True) from exc
        try:
            answer = json.loads(response.data or b"{}")
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status != 200 or "protection" not in answer:
            reason = (
                answer.get("failure")
                or answer.get("error")
                or response.data[:200].decode(errors="replace")
            )
            raise AgentError(
                f"the ECS agent refused ({response.status}): {reason}",
                transient=response.status >= 500 or response.status == 429,
            )


class ScaleInProtection:
    """The worker process's protection, kept across its jobs (see the module's docstring)."""

    def __init__(
        self,
        agent: EcsAgent | None,
        *,
        job_bound_s: float,
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agent = agent
        self._clock = clock
        self._job_bound_s = job_bound_s  # a job's time limit and stop grace
        self._minutes = max(1, min(MAX_MINUTES, math.ceil(job_bound_s / 60) + 1))
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._busy = 0
        self._protected_until: float | None = None  # monotonic; None: not protected by us
        # Until when the task may be protected, by us or by a process before us: a clear is
        # owed while idle (and tried again after a failure) until then. None: nothing owed.
        self._clear_until: float | None = None
        self._clear_timer: threading.Timer | None = None
        self._clear_failures = 0  # since the last clear that worked, or the last job

    def at_start(self) -> None:
        """The worker process starts: its task may still be protected (by a process before it,
        started again in place), for as long as a protection lasts; cleared as after a job."""
        with self._lock:
            if self._agent is None or self._busy:
                return
            self._clear_until = self._clock() + self._minutes * 60
            self._arm_clear(0.0)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around a job: the task is protected from before the job runs until it is idle again."""
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def _enter(self) -> None:
        with self._lock:
            self._busy += 1
            if self._clear_timer is not None:
                self._clear_timer.cancel()
                self._clear_timer = None
            if self._agent is None or (
                self._protected_until is not None
                and self._protected_until - self._clock() >= self._job_bound_s
            ):
                return  # off, or protected for longer than this job can last
            try:
                self._agent.set_protection(enabled=True, expires_in_minutes=self._minutes)
            except AgentError as exc:
                logger.warning("the task could not be protected from scale-in: %s", exc)
                return
            self._protected_until = self._clear_until = self._clock() + self._minutes * 60
            logger.info("task protected from scale-in for %s min", self._minutes)

    def _leave(self) -> None:
        with self._lock:
            self._busy -= 1
            if self._busy or self._agent is None or self._clear_until is None:
                return
            self._clear_failures = 0
            self._arm_clear(self._idle_s)

    def _arm_clear(self, after_s: float) -> None:
        """Call with the lock held: `_clear_if_idle` in `after_s`."""
        self._clear_timer = threading.Timer(after_s, self._clear_if_idle)
        self._clear_timer.daemon = True
        self._clear_timer.start()

    def _clear_if_idle(self) -> None:
        with self._lock:
            if self._busy or self._agent is None or self._clear_until is None:
                return
            try:
                self._agent.set_protection(enabled=False, expires_in_minutes=0)
            except AgentError as exc:
                self._clear_failures += 1
                retry_s = min(CLEAR_RETRY_MAX_S, self._idle_s * 2**self._clear_failures)
                if self._clock() + retry_s < self._clear_until:  # else it expires first
                    self._arm_clear(retry_s)
                logger.warning(
                    "the task's scale-in protection could not be cleared (trying again in "
                    "%.0f s while idle): %s",
                    retry_s,
                    exc,
                )
                return
            self._protected_until = self._clear_until = None
            logger.info("idle: scale-in protection cleared")


_process: ScaleInProtection | None = None
_process_lock = threading.Lock()


def scale_in_protection() -> ScaleInProtection:
    """This worker process's (built at its first job from the settings)."""
    global _process
    with _process_lock:
        if _process is None:
            uri = settings.GPU_ECS_AGENT_URI
            _process = ScaleInProtection(
                EcsAgent(uri) if uri else None,
                job_bound_s=settings.GPU_JOB_TIME_LIMIT_S + settings.GPU_STOP_GRACE_S,
                idle_s=settings.GPU_PROTECTION_IDLE_S,
            )
        return _process
