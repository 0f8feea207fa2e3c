"""Webhook tasks: thin, each safe to run twice (a message is settled once, fenced by status)."""

from __future__ import annotations

from celery import shared_task

from integrations.webhooks.services.delivery import message_deliver
from integrations.webhooks.services.dispatch import messages_dispatch, messages_prune
from sdsaas.contract import TASK_WEBHOOK_DELIVER, TASK_WEBHOOKS_DISPATCH, TASK_WEBHOOKS_PRUNE


@shared_task(name=TASK_WEBHOOKS_DISPATCH, ignore_result=True)
def dispatch_due() -> int:
    return messages_dispatch()


@shared_task(name=TASK_WEBHOOK_DELIVER, ignore_result=True)
def deliver(message_pk: int) -> str:
    return message_deliver(message_pk=message_pk)


@shared_task(name=TASK_WEBHOOKS_PRUNE, ignore_result=True)
def prune() -> int:
    return messages_prune()
