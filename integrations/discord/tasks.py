"""Discord tasks: thin, each safe to run twice (a reply is synced under its lease; deleting a
deleted message is a no-op)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from integrations.discord.client import DiscordError
from integrations.discord.services.replies import handled_interactions_prune, replies_dispatch
from integrations.discord.services.sync import message_delete, reply_sync
from sdsaas.contract import (
    TASK_DISCORD_DISPATCH,
    TASK_DISCORD_MESSAGE_DELETE,
    TASK_DISCORD_PRUNE,
    TASK_DISCORD_REPLY_SYNC,
)


@shared_task(name=TASK_DISCORD_DISPATCH, ignore_result=True)
def dispatch_due() -> int:
    return replies_dispatch()


@shared_task(name=TASK_DISCORD_REPLY_SYNC, ignore_result=True)
def sync(reply_pk: int) -> str:
    return reply_sync(reply_pk=reply_pk)


@shared_task(name=TASK_DISCORD_MESSAGE_DELETE, bind=True, ignore_result=True, max_retries=5)
def delete(self: Any, application_pk: int, channel_id: str, message_id: str) -> str:
    try:
        return message_delete(
            application_pk=application_pk, channel_id=channel_id, message_id=message_id
        )
    except DiscordError as error:
        if not error.retryable:
            return f"not deleted: {error}"
        raise self.retry(countdown=max(2.0, error.retry_after or 0)) from error


@shared_task(name=TASK_DISCORD_PRUNE, ignore_result=True)
def prune() -> int:
    return handled_interactions_prune()
