"""Reporting to the control plane: each event of the contract is a task on the control queue.

The control worker applies events fenced by attempt, so sending one twice, or late, changes
nothing. Progress is best effort (the next one supersedes a lost one); every other event waits
out an outage, since the job's outcome depends on it.

Off the job's path: `received`, `started` and `progress` are handed to this process's event
thread (`interim_events`) and the job goes on at once; a job's outcome (`succeeded`, `failed`,
`preempted`) is sent by the caller, once every interim event handed over before it was sent, so
the control plane gets a job's events in order and the outcome before the message is settled.
An interim event lost with its process changes nothing the next delivery does not report again.
Events sent together (a micro-batch's outcomes, what the event thread was handed since it last
sent) go in SendMessageBatch calls (`sdsaas.broker.batch`): one round trip for up to 10.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from functools import partial

from kombu.connection import ConnectionPool
from kombu.exceptions import OperationalError

from gpu_worker.app import app as celery_app
from gpu_worker.retry import retry_through_outage, skip_during_outage
from sdsaas.background import BackgroundBatches
from sdsaas.broker.batch import collecting, send_collected
from sdsaas.broker.sqs import control_queue_name
from sdsaas.contract import Event, JobProgress, JobReceived, JobStarted

logger = logging.getLogger(__name__)

INTERIM = (JobReceived, JobStarted, JobProgress)

# How the runner reports: a job's events, or a batch's of one kind, sent together.
Send = Callable[[Sequence[Event]], None]


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
    any other event waits it out; more than one in SendMessageBatch calls. A job's progress comes
    after its other interim events, so sending it last keeps each job's order."""
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
    if len(events) > 1:
        publish_together(events)
        return
    [event] = events
    celery_app.send_task(event.TASK, kwargs=event.to_wire(), queue=control_queue_name())


@functools.cache
def interim_events() -> BackgroundBatches[Event]:
    """The event thread: what was handed over since it last sent goes together."""
    return BackgroundBatches("job-events", publish_all)


def publish_together(events: list[Event]) -> None:
    """Send events now, on the caller's thread, in SendMessageBatch calls, removing from `events`
    each one SQS took. What it refused for a reason of its own stays in `events` and raises a
    transient error, for the caller's retry to send again (a control queue gone meanwhile is
    created again by the next try). An event refused as the sender's fault is logged and dropped:
    sending it again cannot help, and failing the task would fail the batch's jobs whose outcome
    SQS took; a job whose outcome is lost so is found by the control plane's reconciler."""
    with _batch_publisher_pool().acquire(block=True) as connection:
        with collecting(connection) as collected:
            for event in events:
                celery_app.send_task(
                    event.TASK,
                    kwargs=event.to_wire(),
                    queue=control_queue_name(),
                    connection=connection,
                    retry=False,
                )
        outcome = send_collected(collected)
    again = []
    for event, reason in zip(events, outcome, strict=True):
        if reason is None:
            continue
        if reason.sender_fault:
            logger.error("SQS refused event %s of job %s: %s", event.TASK, event.job_id, reason)
        else:
            again.append((event, reason))
    events[:] = [event for event, _ in again]
    if again:
        raise OperationalError(f"SQS refused {len(again)} events: {again[0][1]}")


@functools.cache
def _batch_publisher_pool() -> ConnectionPool:
    """Connections of the batch transport: the task's thread and the event thread's."""
    connection = celery_app.connection_for_write(transport="sdsaas.broker.batch:Transport")
    return connection.Pool(limit=2)
