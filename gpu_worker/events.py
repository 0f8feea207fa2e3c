"""Reporting to the control plane: each event of the contract is a task on the control queue.

The control worker applies events fenced by attempt, so sending one twice, or late, changes
nothing. Progress is best effort (the next one supersedes a lost one); every other event waits
out an outage, since the job's outcome depends on it.

Off the job's path: `received`, `started` and `progress` are handed to this process's event
thread (`interim_events`) and the job goes on at once; a job's outcome (`succeeded`, `failed`,
`preempted`) is sent by the caller, once every interim event handed over before it was sent, so
the control plane gets a job's events in order and the outcome before the message is settled.
An interim event lost with its process changes nothing the next delivery does not report again,
with one exception: a delivery with no `received` event counts as one that never ran when its
message is dead-lettered (jobs/services/reconcile.py), so its job is published again, not failed.
Events sent together (a micro-batch's outcomes, what the event thread was handed since it last
sent) go as one task, `TASK_JOB_EVENTS`: one SQS message to send, receive and delete, and one task
for the control worker to run, instead of one each.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from functools import partial

from gpu_worker.app import app as celery_app
from gpu_worker.retry import retry_through_outage, skip_during_outage
from sdsaas.background import BackgroundBatches
from sdsaas.broker.sqs import control_queue_name
from sdsaas.contract import (
    TASK_JOB_EVENTS,
    Event,
    JobProgress,
    JobReceived,
    JobStarted,
    events_to_wire,
)

INTERIM = (JobReceived, JobStarted, JobProgress)

# How the runner reports: a job's events, or a batch's of one kind, sent together.
Send = Callable[[Sequence[Event]], None]

# Events in one message at most (~0.5-1 KiB each on the wire: well inside SQS's 256 KiB).
EVENTS_PER_MESSAGE = 50


def send_event(event: Event) -> None:
    send_events([event])


def send_events(events: Sequence[Event]) -> None:
    """Interim events to the event thread; then the outcomes, after it sent what it had."""
    interim = [event for event in events if isinstance(event, INTERIM)]
    outcomes = [event for event in events if not isinstance(event, INTERIM)]
    if interim:
        interim_events().put(interim)
    if outcomes:
        interim_events().flush()
        publish_all(outcomes)


def publish_all(events: Sequence[Event]) -> None:
    """Send events now, on the caller's thread, in order: progress is skipped during an outage,
    any other event waits it out; more than one as one task. A job's progress comes after its
    other interim events, so sending it last keeps each job's order."""
    progress: list[Event] = [event for event in events if isinstance(event, JobProgress)]
    others: list[Event] = [event for event in events if not isinstance(event, JobProgress)]
    # Each policy calls `_send` again with the same list: what SQS took is gone from it.
    if others:
        retry_through_outage(_what(others), partial(_send, others))
    if progress:
        skip_during_outage(_what(progress), partial(_send, progress), None)


def _what(events: Sequence[Event]) -> str:
    return f"event {events[0].TASK}" if len(events) == 1 else f"{len(events)} events"


def _send(events: list[Event]) -> None:
    """One event as its own task, several as `TASK_JOB_EVENTS` tasks of up to EVENTS_PER_MESSAGE;
    each message's events leave `events` once SQS took it, so a retry sends only the rest."""
    while events:
        chunk = events[:EVENTS_PER_MESSAGE]
        if len(chunk) == 1:
            name, kwargs = chunk[0].TASK, chunk[0].to_wire()
        else:
            name, kwargs = TASK_JOB_EVENTS, {"events": events_to_wire(chunk)}
        celery_app.send_task(name, kwargs=kwargs, queue=control_queue_name())
        del events[: len(chunk)]


@functools.cache
def interim_events() -> BackgroundBatches[Event]:
    """The event thread: what was handed over since it last sent goes together."""
    return BackgroundBatches("job-events", publish_all)
