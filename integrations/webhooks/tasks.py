"""Webhook tasks: thin, each safe to run twice (a message is sent by the task that claims it with
its dispatch's lease, and settled once, fenced by its status and lease)."""

from __future__ import annotations

import datetime as dt

from celery import shared_task

from integrations.webhooks.services.delivery import message_deliver
from integrations.webhooks.services.dispatch import messages_dispatch, messages_prune
from sdsaas.contract import TASK_WEBHOOK_DELIVER, TASK_WEBHOOKS_DISPATCH, TASK_WEBHOOKS_PRUNE


@shared_task(name=TASK_WEBHOOKS_DISPATCH, ignore_result=True)
def dispatch_due() -> int:
    return messages_dispatch()


@shared_task(name=TASK_WEBHOOK_DELIVER, ignore_result=True)
def deliver(message_pk: int, lease: str | None = None) -> str:
    # No lease: a task queued by a release before it (claimed as the message stands).
    return message_deliver(
        message_pk=message_pk, lease=dt.datetime.fromisoformat(lease) if lease else None
    )


@shared_task(name=TASK_WEBHOOKS_PRUNE, ignore_result=True)
def prune() -> int:
    return messages_prune()
