"""The one announcement that a job changed state, which notifiers (webhooks, Discord) subscribe to.

The lifecycle (jobs/services/lifecycle.py) calls `job_state_changed` once per change a client can
see: the job started processing, made progress, or became final (succeeded, failed, canceled).
It is called
inside the transaction that makes the change, after the change, so that:
- an announcement is made exactly once per change, whatever the duplicate or late events;
- it is never made for a change that rolled back, and never lost after one that committed.

Subscribers are named in `settings.JOB_STATE_SUBSCRIBERS` (dotted paths) and called in order, in
that transaction. A subscriber writes its own rows there (an outbox: a webhook delivery, a
Discord follow-up) and sends its work on commit (`transaction.on_commit`); it does no network
I/O itself. Its error rolls the change back: the event that caused it is applied again later.

An explicit call, not a Django signal: the lifecycle names the one place, and integrations
depend on this module, never on the lifecycle's internals (an import-linter contract).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from django.conf import settings
from django.utils.module_loading import import_string


class JobEventType(StrEnum):
    """The name under which each kind of change is published (webhook event types)."""

    STARTED = "job.started"
    PROGRESS = "job.progress"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"


EVENT_OF_STATUS = {
    "processing": JobEventType.STARTED,
    "succeeded": JobEventType.SUCCEEDED,
    "failed": JobEventType.FAILED,
    "canceled": JobEventType.CANCELED,
}


@dataclass(frozen=True)
class JobStateChange:
    job_pk: int
    job_id: str  # the public id
    tenant_id: int
    status: str  # the new status: processing, succeeded, failed or canceled
    attempt: int
    at: dt.datetime
    progress: tuple[int, int] | None = None  # (step, total): a progress change while processing

    @property
    def event_type(self) -> JobEventType:
        return JobEventType.PROGRESS if self.progress is not None else EVENT_OF_STATUS[self.status]


Subscriber = Callable[[JobStateChange], None]


@functools.cache
def _subscribers(paths: tuple[str, ...]) -> tuple[Subscriber, ...]:
    return tuple(import_string(path) for path in paths)


def job_state_changed(change: JobStateChange) -> None:
    """Tell every subscriber; call inside the transaction that changed the job."""
    for subscriber in _subscribers(tuple(settings.JOB_STATE_SUBSCRIBERS)):
        subscriber(change)
