"""Reporting to the control plane: each event of the contract is a task on the control queue.

The control worker applies events fenced by attempt, so sending one twice, or late, changes
nothing. Progress is best effort (the next one supersedes a lost one); every other event waits
out an outage, since the job's outcome depends on it.

Off the job's path: `received`, `started` and `progress` are handed to this process's event
thread (`interim_events`) and the job goes on at once; a job's outcome (`succeeded`, `failed`,
`preempted`) is sent by the caller, once every interim event handed over before it was sent, so
the control plane gets a job's events in order and the outcome before the message is settled.
An interim event lost with its process changes nothing the next delivery does not report again.
The outcomes of a micro-batch's jobs, sent together, go in SendMessageBatch calls
(`sdsaas.broker.batch`): one round trip for up to 10 instead of one each.
"""

from __future__ import annotations

import functools
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
    if not outcomes:
        return
    interim_events().flush()
    if len(outcomes) == 1:
        publish(outcomes[0])
    else:
        retry_through_outage(f"{len(outcomes)} events", partial(publish_together, outcomes))


def publish(event: Event) -> None:
    """Send one event now, on the caller's thread."""

    def send() -> None:
        celery_app.send_task(event.TASK, kwargs=event.to_wire(), queue=control_queue_name())

    if isinstance(event, JobProgress):
        skip_during_outage("progress event", send, None)
    else:
        retry_through_outage(f"event {event.TASK}", send)


def _publish_each(events: list[Event]) -> None:
    for event in events:
        publish(event)


@functools.cache
def interim_events() -> BackgroundBatches[Event]:
    return BackgroundBatches("job-events", _publish_each)


def publish_together(events: list[Event]) -> None:
    """Send events now, on the caller's thread, in SendMessageBatch calls. SQS refusing any of
    them fails the whole (transient: `retry_through_outage` sends them all again, and the control
    plane applies an event sent twice once; a control queue gone meanwhile is created again by
    the next try)."""
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
        refused = [reason for reason in send_collected(collected) if reason is not None]
    if refused:
        raise OperationalError(f"SQS refused {len(refused)} of {len(events)} events: {refused[0]}")


@functools.cache
def _batch_publisher_pool() -> ConnectionPool:
    connection = celery_app.connection_for_write(transport="sdsaas.broker.batch:Transport")
    return connection.Pool(limit=1)
