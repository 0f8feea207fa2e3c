"""Reporting to the control plane: each event of the contract is a task on the control queue.

The control worker applies events fenced by attempt, so sending one twice, or late, changes
nothing. Progress is best effort (the next one supersedes a lost one); every other event waits
out an outage, since the job's outcome depends on it.

Off the job's path: `received`, `started` and `progress` are handed to this process's event
thread (`interim_events`) and the job goes on at once; a job's outcome (`succeeded`, `failed`,
`preempted`) is sent by the caller, once every interim event handed over before it was sent, so
the control plane gets a job's events in order and the outcome before the message is settled.
An interim event lost with its process changes nothing the next delivery does not report again.
"""

from __future__ import annotations

import functools

from gpu_worker.app import app as celery_app
from gpu_worker.retry import retry_through_outage, skip_during_outage
from sdsaas.background import BackgroundBatches
from sdsaas.broker.sqs import control_queue_name
from sdsaas.contract import Event, JobProgress, JobReceived, JobStarted

INTERIM = (JobReceived, JobStarted, JobProgress)


def send_event(event: Event) -> None:
    if isinstance(event, INTERIM):
        interim_events().put([event])
        return
    interim_events().flush()
    publish(event)


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
