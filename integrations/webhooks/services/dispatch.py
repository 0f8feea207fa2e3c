"""The durable schedule: due messages are handed to the webhooks queue, fairly.

A message is due at `due_at` (now for a new one; later after a failed attempt, by
`RETRY_DELAYS_S`). The scheduler calls `messages_dispatch` every few seconds; new messages are
dispatched at once after their transaction commits. Fairness: each target (an endpoint, or a
per-job URL) has at most WEBHOOK_TARGET_CONCURRENCY messages in flight, and every target with
room gets its oldest due messages in each round, so a dead endpoint of one tenant (whose
attempts take up to the 15 s timeout) never holds up another's deliveries.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import zlib
from collections import Counter

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from integrations.webhooks.models import WebhookAttempt, WebhookMessage
from sdsaas.broker.sqs import webhooks_queue_name
from sdsaas.celery import app as celery_app
from sdsaas.contract import TASK_WEBHOOK_DELIVER

logger = logging.getLogger(__name__)

# After attempt n (1: the immediate one) the next is due RETRY_DELAYS_S[n - 1] later, +-10%:
# 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h; about three days in all.
RETRY_DELAYS_S = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
MAX_ATTEMPTS = 1 + len(RETRY_DELAYS_S)
JITTER = 0.1
# A message handed to the queue and not settled within this long (its sender died) is due again.
SENDING_LEASE = dt.timedelta(minutes=2)
WAITING = [WebhookMessage.Status.PENDING, WebhookMessage.Status.SENDING]

Target = tuple[int | None, str]  # (endpoint id, per-job URL)
# The first key of the dispatch's advisory locks (PostgreSQL's two-key form), one per target.
_TARGET_LOCKS = 0x57484B  # "WHK"


def next_due(*, attempts: int, now: dt.datetime) -> dt.datetime | None:
    """When the attempt after `attempts` is due; None when the schedule is used up."""
    if attempts >= MAX_ATTEMPTS:
        return None
    delay = RETRY_DELAYS_S[attempts - 1]
    return now + dt.timedelta(seconds=delay * random.uniform(1 - JITTER, 1 + JITTER))


def messages_dispatch(
    *, message_ids: list[int] | None = None, now: dt.datetime | None = None
) -> int:
    """Hand due messages to the webhooks queue; how many. Safe to run concurrently."""
    now = now or timezone.now()
    if message_ids is None:  # the scheduled sweep, not the hand-over of new messages
        _reclaim_lost_attempts(now=now)
    with transaction.atomic():
        due = WebhookMessage.objects.filter(status=WebhookMessage.Status.PENDING, due_at__lte=now)
        if message_ids is not None:
            due = due.filter(pk__in=message_ids)
        chosen = _fair_share(due)
        WebhookMessage.objects.filter(pk__in=chosen).update(
            status=WebhookMessage.Status.SENDING, sending_since=now
        )
        transaction.on_commit(lambda: _send(chosen, lease=now))
    return len(chosen)


@transaction.atomic
def _reclaim_lost_attempts(*, now: dt.datetime) -> None:
    """Messages handed over and not settled within SENDING_LEASE: their sender died, or failed
    before it could record anything. That counts as an attempt, logged, with the next one due on
    the schedule: a message that keeps killing its sender still comes to the end of it."""
    lost = WebhookMessage.objects.select_for_update(skip_locked=True).filter(
        status=WebhookMessage.Status.SENDING, sending_since__lt=now - SENDING_LEASE
    )
    for message in lost:
        message.attempts += 1
        WebhookAttempt.objects.create(
            message=message,
            number=message.attempts,
            started_at=message.sending_since or now,
            error="no outcome recorded: the sender was lost during the attempt",
        )
        message.due_at = next_due(attempts=message.attempts, now=now)
        failed = message.due_at is None
        message.status = WebhookMessage.Status.FAILED if failed else WebhookMessage.Status.PENDING
        message.save(update_fields=["attempts", "status", "due_at"])


def _fair_share(due: QuerySet[WebhookMessage]) -> list[int]:
    """Per target with room, its oldest due messages (locked, skipping rows another takes)."""
    targets: set[Target] = set(due.values_list("endpoint_id", "job_url").distinct())
    _lock_targets(targets)
    in_flight: Counter[Target] = Counter(
        WebhookMessage.objects.filter(status=WebhookMessage.Status.SENDING)
        .filter(_of_targets(targets))
        .values_list("endpoint_id", "job_url")
    )
    chosen: list[int] = []
    for target in targets:
        room = settings.WEBHOOK_TARGET_CONCURRENCY - in_flight[target]
        if room <= 0:
            continue
        endpoint_id, job_url = target
        chosen += (
            due.filter(endpoint_id=endpoint_id, job_url=job_url)
            .select_for_update(skip_locked=True)
            .order_by("due_at", "id")
            .values_list("pk", flat=True)[:room]
        )
    return chosen


def _lock_targets(targets: set[Target]) -> None:
    """Serialise the dispatches that choose for the same targets, until the commit: each counts a
    target's messages in flight once the one before it has marked its own (READ COMMITTED), so
    that two at once never exceed a target's concurrency. Taken in one order: no deadlock. (A
    hash that two targets share only serialises them. SQLite has no such lock and runs one
    writing transaction at a time.)"""
    if connection.vendor != "postgresql" or not targets:
        return
    keys = sorted({zlib.crc32(f"{endpoint}|{url}".encode()) - 2**31 for endpoint, url in targets})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, key) FROM unnest(%s::int4[]) AS key",
            [_TARGET_LOCKS, keys],
        )


def _of_targets(targets: set[Target]) -> Q:
    condition = Q(pk__in=[])
    for endpoint_id, job_url in targets:
        condition |= Q(endpoint_id=endpoint_id, job_url=job_url)
    return condition


def messages_prune(*, now: dt.datetime | None = None) -> int:
    """Delete settled messages (their attempts with them) older than WEBHOOK_LOG_DAYS."""
    cutoff = (now or timezone.now()) - dt.timedelta(days=settings.WEBHOOK_LOG_DAYS)
    deleted, _ = WebhookMessage.objects.filter(
        status__in=[WebhookMessage.Status.SUCCEEDED, WebhookMessage.Status.FAILED],
        created_at__lt=cutoff,
    ).delete()
    return deleted


def _send(message_ids: list[int], *, lease: dt.datetime) -> None:
    """One task per message, with its lease (when it was handed over: the sender claims it only
    if no other dispatch has since); a failed send leaves it to the lease and the next sweep."""
    for pk in message_ids:
        try:
            celery_app.send_task(
                TASK_WEBHOOK_DELIVER,
                kwargs={"message_pk": pk, "lease": lease.isoformat()},
                queue=webhooks_queue_name(),
            )
        except Exception as exc:
            logger.warning("could not queue webhook message %s: %s", pk, exc)
            return
