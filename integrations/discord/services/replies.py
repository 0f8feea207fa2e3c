"""Replies out of date are handed to the discord queue: on the lifecycle's announcement, after
the job's transaction commits, and by the scheduled sweep (every 2 s), which also catches a
hand-over that failed, a retry that is due, and queue positions that moved.

`on_job_state_change` is a subscriber (settings.JOB_STATE_SUBSCRIBERS): inside the transaction
that changed the job it only marks the job's reply as changed; the sync renders the job as it
is when it runs, so a burst of progress is one edit, and the final state is never missed.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from integrations.discord.models import DiscordReply, HandledInteraction
from jobs.announcements import JobStateChange
from jobs.models import Job
from sdsaas.broker.sqs import discord_queue_name
from sdsaas.celery import app as celery_app
from sdsaas.contract import TASK_DISCORD_MESSAGE_DELETE, TASK_DISCORD_REPLY_SYNC

logger = logging.getLogger(__name__)

# A sync handed to the queue and not finished within this long (its worker died) is due again.
SENDING_LEASE = dt.timedelta(minutes=2)
# A reply of a job still waiting for admission is looked at again this often (its position).
QUEUED_REFRESH = dt.timedelta(seconds=10)
HANDLED_KEPT = dt.timedelta(days=1)


def on_job_state_change(change: JobStateChange) -> None:
    """Mark the job's reply out of date (no reply: the job did not come from Discord)."""
    changed = DiscordReply.objects.filter(job_id=change.job_pk, done=False).update(
        changed_at=change.at
    )
    if changed:
        ids = list(DiscordReply.objects.filter(job_id=change.job_pk).values_list("pk", flat=True))
        transaction.on_commit(lambda: _hand_over(ids))


def _hand_over(reply_ids: list[int]) -> None:
    try:
        replies_dispatch(reply_ids=reply_ids)
    except Exception as exc:  # the job's change committed; the sweep sends it
        logger.warning("could not dispatch Discord replies now: %s", exc)


def replies_dispatch(*, reply_ids: list[int] | None = None, now: dt.datetime | None = None) -> int:
    """Send a sync task for each reply out of date and free (all, or those of `reply_ids`)."""
    now = now or timezone.now()
    if reply_ids is None:  # the sweep: queued jobs' replies are refreshed now and then
        DiscordReply.objects.filter(
            done=False,
            job__status=Job.Status.QUEUED,
            changed_at__lt=now - QUEUED_REFRESH,
        ).update(changed_at=now)
    due = DiscordReply.objects.filter(done=False).filter(
        Q(synced_at__isnull=True) | Q(changed_at__gt=F("synced_at")),
        Q(retry_at__isnull=True) | Q(retry_at__lte=now),
        Q(sending_since__isnull=True) | Q(sending_since__lt=now - SENDING_LEASE),
    )
    if reply_ids is not None:
        due = due.filter(pk__in=reply_ids)
    ids = list(due.values_list("pk", flat=True)[:500])
    for pk in ids:
        try:
            celery_app.send_task(
                TASK_DISCORD_REPLY_SYNC, kwargs={"reply_pk": pk}, queue=discord_queue_name()
            )
        except Exception as exc:
            logger.warning("could not queue the sync of Discord reply %s: %s", pk, exc)
            break
    return len(ids)


def message_delete_send(*, application_pk: int, channel_id: str, message_id: str) -> None:
    """Have a result message deleted (a click on its Delete button)."""
    try:
        celery_app.send_task(
            TASK_DISCORD_MESSAGE_DELETE,
            kwargs={
                "application_pk": application_pk,
                "channel_id": channel_id,
                "message_id": message_id,
            },
            queue=discord_queue_name(),
        )
    except Exception as exc:  # the user sees the message stay, and may click again
        logger.warning("could not queue the deletion of Discord message %s: %s", message_id, exc)


def handled_interactions_prune(*, now: dt.datetime | None = None) -> int:
    """Forget handled interaction ids older than a day (their timestamps are refused anyway)."""
    cutoff = (now or timezone.now()) - HANDLED_KEPT
    deleted, _ = HandledInteraction.objects.filter(received_at__lt=cutoff).delete()
    return deleted
