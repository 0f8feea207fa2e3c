"""Reporting to the control plane: each event of the contract is a task on the control queue.

The control worker applies events fenced by attempt, so sending one twice, or late, changes
nothing. Progress is best effort (the next one supersedes a lost one); every other event waits
out an outage, since the job's outcome depends on it.
"""

from __future__ import annotations

from gpu_worker.app import app as celery_app
from gpu_worker.retry import retry_through_outage, skip_during_outage
from sdsaas.broker.sqs import control_queue_name
from sdsaas.contract import Event, JobProgress


def send_event(event: Event) -> None:
    def publish() -> None:
        celery_app.send_task(event.TASK, kwargs=event.to_wire(), queue=control_queue_name())

    if isinstance(event, JobProgress):
        skip_during_outage("progress event", publish, None)
    else:
        retry_through_outage(f"event {event.TASK}", publish)
