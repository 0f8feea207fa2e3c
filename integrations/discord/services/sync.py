"""Bringing one reply up to date, and deleting a result: the discord queue's work.

A sync holds the reply's lease, renders its job as it is now and shows it: it edits the
interaction's deferred reply while its token lives; past that (a long queue), the final state
is posted to the channel with the bot token, replying to the original message, so nothing
finished is lost. Progress is edited at most every DISCORD_EDIT_INTERVAL_S; an unchanged render
is not sent. A call that may succeed later is tried again with backoff (Discord's retry_after
when it gave one); one that cannot ends the reply with its error.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from integrations.discord.client import DiscordError, discord_client
from integrations.discord.models import DiscordApplication, DiscordReply
from integrations.discord.render import Rendered, job_render
from integrations.discord.services.replies import SENDING_LEASE
from integrations.discord.tokens import token_decrypt

logger = logging.getLogger(__name__)

# An edit is not started this close to the token's end (it could expire in flight).
TOKEN_MARGIN = dt.timedelta(seconds=30)
INVALID_WEBHOOK_TOKEN = 50027  # Discord's code: the interaction token expired
RETRY_BACKOFF_S = (2, 5, 15, 60, 300)
# A final reply keeps being tried this long through a Discord outage; progress is dropped sooner.
GIVE_UP_AFTER = dt.timedelta(hours=24)


def reply_sync(*, reply_pk: int) -> str:
    """Show the reply's job as it is now; what was done, for the log. Safe to run twice."""
    now = timezone.now()
    leased = (
        DiscordReply.objects.filter(pk=reply_pk, done=False)
        .filter(Q(sending_since__isnull=True) | Q(sending_since__lt=now - SENDING_LEASE))
        .update(sending_since=now)
    )
    if not leased:
        return "busy or done"
    reply = DiscordReply.objects.select_related("application", "job__model").get(pk=reply_pk)
    seen = reply.changed_at
    final = reply.job.is_final
    if not final and reply.edited_at and now - reply.edited_at < _interval():
        _release(reply, retry_at=reply.edited_at + _interval())
        return "held back"
    rendered = job_render(
        job=reply.job, user_id=reply.user_id, upscale_model=reply.application.upscale_model
    )
    if rendered.digest == reply.shown:
        _settle(reply, seen=seen, final=final, now=now)
        return "unchanged"
    try:
        outcome = _show(reply=reply, rendered=rendered, final=final, now=now)
    except DiscordError as error:
        return _failed(reply, error=error, final=final, now=now)
    reply.shown = rendered.digest
    _settle(reply, seen=seen, final=final, now=now)
    return outcome


def _show(*, reply: DiscordReply, rendered: Rendered, final: bool, now: dt.datetime) -> str:
    client = discord_client()
    application = reply.application
    if now < reply.token_expires_at - TOKEN_MARGIN:
        try:
            shown = client.interaction_original_edit(
                application_id=application.application_id,
                token=token_decrypt(reply.token_encrypted),
                payload=rendered.payload,
                files=rendered.files,
            )
            reply.message_id = str(shown.get("id") or reply.message_id)
            reply.edited_at = now
            return "edited"
        except DiscordError as error:
            if error.code != INVALID_WEBHOOK_TOKEN:
                raise
    if not final:
        return "token expired: progress not shown"
    _post_to_channel(reply=reply, application=application, rendered=rendered)
    return "posted to the channel"


def _post_to_channel(
    *, reply: DiscordReply, application: DiscordApplication, rendered: Rendered
) -> None:
    """The final state past the token's life: a channel message replying to the original."""
    payload = dict(rendered.payload)
    payload["allowed_mentions"] = {"parse": [], "users": [reply.user_id]}
    if reply.message_id:
        payload["message_reference"] = {"message_id": reply.message_id, "fail_if_not_exists": False}
    posted = discord_client().channel_message_create(
        bot_token=token_decrypt(application.bot_token_encrypted),
        channel_id=reply.channel_id,
        payload=payload,
        files=rendered.files,
    )
    reply.channel_message_id = str(posted.get("id") or "")


def _failed(reply: DiscordReply, *, error: DiscordError, final: bool, now: dt.datetime) -> str:
    gave_up = now - reply.created_at > GIVE_UP_AFTER or not error.retryable
    if gave_up:
        logger.warning("Discord reply %s given up: %s", reply.pk, error)
        DiscordReply.objects.filter(pk=reply.pk).update(
            sending_since=None, done=final, error=str(error)[:256], synced_at=reply.changed_at
        )
        return f"failed: {error}"
    delay = RETRY_BACKOFF_S[min(reply.failures, len(RETRY_BACKOFF_S) - 1)]
    wait = max(delay, error.retry_after or 0)
    DiscordReply.objects.filter(pk=reply.pk).update(
        sending_since=None,
        failures=reply.failures + 1,
        retry_at=now + dt.timedelta(seconds=wait),
        error=str(error)[:256],
    )
    return f"retry in {wait:g} s: {error}"


def _settle(reply: DiscordReply, *, seen: dt.datetime, final: bool, now: dt.datetime) -> None:
    DiscordReply.objects.filter(pk=reply.pk).update(
        synced_at=seen,
        sending_since=None,
        retry_at=None,
        failures=0,
        error="",
        done=final,
        shown=reply.shown,
        message_id=reply.message_id,
        channel_message_id=reply.channel_message_id,
        edited_at=reply.edited_at,
    )


def _release(reply: DiscordReply, *, retry_at: dt.datetime) -> None:
    DiscordReply.objects.filter(pk=reply.pk).update(sending_since=None, retry_at=retry_at)


def _interval() -> dt.timedelta:
    return dt.timedelta(seconds=settings.DISCORD_EDIT_INTERVAL_S)


def message_delete(*, application_pk: int, channel_id: str, message_id: str) -> str:
    """Delete a result message with the bot token (the bot may delete its own messages)."""
    application = DiscordApplication.objects.filter(pk=application_pk).first()
    if application is None or not message_id:
        return "nothing to delete"
    try:
        discord_client().channel_message_delete(
            bot_token=token_decrypt(application.bot_token_encrypted),
            channel_id=channel_id,
            message_id=message_id,
        )
    except DiscordError as error:
        if error.status == 404:
            return "already deleted"
        raise
    return "deleted"
