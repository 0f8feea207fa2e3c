"""Admitted jobs whose queue message is gone (the reconciler) or dead-lettered (the dead-letter
sweep) are published again, or failed.

Takes the tenant row lock first, then the job rows (`jobs.services.common.lock_tenant`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from jobs import selectors
from jobs.models import DiffusionModel, Job
from jobs.services.common import lock_tenant, record_event
from jobs.services.dispatch import jobs_admit, jobs_publish
from jobs.services.lifecycle import job_fail
from sdsaas.broker.sqs import (
    DeadLetter,
    control_queue_name,
    delete_dead_letter,
    forget_queues,
    model_queue_name,
    queue_depth,
    receive_dead_letters,
)
from sdsaas.contract import FailureCode, dead_letter_queue_name
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# A job that looks lost is acted on only at a second look, at least this long after the first,
# that finds it unchanged (same attempt, status and progress step; still silent, no message).
# Progress writes no event, so a denoising job can look silent: it reports progress every second.
# And an event already sent (a success whose message its worker just deleted) is applied by then.
RECONCILE_CONFIRM_S = 10


@dataclass(frozen=True)
class Reconciled:
    """Public ids of the jobs of one run: first looks, published again, failed."""

    unseen: list[str]
    republished: list[str]
    failed: list[str]


# The most lost-looking jobs a run looks at (the oldest first); the next run takes the others.
RECONCILE_WINDOW = 500
# An admitted job whose message is on the control queue: its img2img image is still to be fetched.
FETCHING = Q(init_image_key="") & ~Q(init_image_url="")


def _on_empty_queues(silent: QuerySet[Job]) -> Q:
    """Which of the `silent` jobs are on a queue that holds no message (`_holds_no_message`):
    each queue they are on asked once (a queue SQS cannot tell about now counts as not empty:
    the next run asks again)."""
    queues = {
        model_queue_name(slug): Q(model__slug=slug) & ~FETCHING
        for slug in set(silent.exclude(FETCHING).values_list("model__slug", flat=True).distinct())
    }
    if silent.filter(FETCHING).exists():
        queues[control_queue_name()] = FETCHING
    on_empty = Q(pk__in=[])
    for queue, jobs in queues.items():
        try:
            if _holds_no_message(queue):
                on_empty |= jobs
        except Exception as exc:  # SQS away: nothing can be told, the next run tries again
            logger.warning("reconciler: cannot read %s (%s)", queue, exc)
    return on_empty


def _holds_no_message(queue: str) -> bool:
    """Whether `queue` holds no message that could still be any admitted job's.

    A model queue: no message visible, in flight or delayed, and none in its dead-letter queue
    (the dead-letter sweep settles those jobs). The control queue always has messages in flight
    (this very task, events being applied), so there only a waiting message counts; running the
    image fetch twice is harmless (`job_fetch_input_image`). A missing queue holds nothing.
    Raises when SQS cannot answer: an outage is never taken for an empty queue.
    """
    depth = queue_depth(queue)
    if depth is None:
        forget_queues()  # publishing creates it again, with its dead-letter queue and redrive
        return True
    if queue == control_queue_name():
        return depth.visible + depth.delayed == 0
    dead = queue_depth(dead_letter_queue_name(queue))
    return depth.total == 0 and (dead is None or dead.visible + dead.in_flight == 0)


def jobs_reconcile_lost(*, silent_for: dt.timedelta) -> Reconciled:
    """Publish again, or fail, the admitted jobs whose queue message is gone; then admit.

    The database is the truth; SQS cannot be asked for one message. A job looks lost when it is
    published and in flight, has shown no sign of life for `silent_for` (no admission, publish or
    event; longer than SQS's approximate counts lag), and its queue holds no message at all
    (`_holds_no_message`): a real backlog, or a job a live worker holds (its message is in flight
    while the heartbeat extends it), is never touched. The first look records an `unseen` event;
    a later run acts only if the job still looks lost and unchanged (RECONCILE_CONFIRM_S).

    A lost job is published again at attempt + SQS_MAX_RECEIVES, with a `republished` event. The
    original message ran at most as its attempt + SQS_MAX_RECEIVES - 1 (SQS dead-letters it after
    that many receives), and the row's attempt is at least the original's (a preempted job's row
    waits at the attempt its copy runs as: `job_mark_preempted`), so every event of a late
    original (received, started, progress, succeeded, failed, dead-lettered) is fenced out.
    After RECONCILE_MAX_REPUBLISHES it fails `message_lost` instead, credits released.

    Rows are taken under the tenant lock, then SKIP LOCKED, and checked again after the queues
    were read: an event that arrived meanwhile keeps its job, and two reconcilers never act on
    the same job (the `republished` event is itself a sign of life).
    """
    now = timezone.now()
    since = now - silent_for
    silent = selectors.jobs_silent_in_flight(since=since)
    lost: dict[int, list[int]] = {}
    # The queues first, then the jobs: a backlog on one model does not hide another's lost jobs.
    looking = silent.filter(_on_empty_queues(silent)).order_by("id")
    for job_pk, tenant_id in looking.values_list("pk", "tenant_id")[:RECONCILE_WINDOW]:
        lost.setdefault(tenant_id, []).append(job_pk)
    done = Reconciled(unseen=[], republished=[], failed=[])
    looked_before = now - dt.timedelta(seconds=RECONCILE_CONFIRM_S)
    silent_s = int(silent_for.total_seconds())
    reason = f"no message on its queue and no sign of life for over {silent_s} s"
    for tenant in Tenant.objects.filter(pk__in=lost).order_by("pk"):
        with transaction.atomic():
            lock_tenant(tenant)
            ids = list(
                selectors.jobs_silent_in_flight(since=since)
                .select_for_update(skip_locked=True)
                .filter(tenant=tenant, id__in=lost[tenant.pk])
                .values_list("id", flat=True)
            )
            jobs = Job.objects.select_related("tenant__plan", "model").filter(id__in=ids)
            again = [
                job.pk
                for job in jobs.order_by("id")
                if _reconcile_one(job, reason=reason, looked_before=looked_before, done=done)
            ]
            if again:
                transaction.on_commit(functools.partial(jobs_publish, job_ids=again))
            jobs_admit(tenant=tenant)  # the slots of failed jobs, or any left free
    return done


def _reconcile_one(job: Job, *, reason: str, looked_before: dt.datetime, done: Reconciled) -> bool:
    """Record the first look at a lost-looking job; at a second look that finds it unchanged,
    make it unpublished at its new attempt (True: publish it after commit), or fail it after
    RECONCILE_MAX_REPUBLISHES. Call under the tenant lock."""
    looks = {"status": job.status, "progress_step": job.progress_step}
    first = job.events.filter(kind="unseen", attempt=job.attempt).order_by("-id").first()
    if first is None or {key: first.detail.get(key) for key in looks} != looks:
        record_event(job, "unseen", job.attempt, reason=reason, **looks)
        done.unseen.append(job.public_id)
        return False
    if first.created_at > looked_before:
        return False  # too soon for the second look
    times = _republished(job)
    if times >= settings.RECONCILE_MAX_REPUBLISHES:
        message = (
            f"The job's queue message was lost {times + 1} times (its queue was purged, deleted "
            "or recreated) and nothing would run it; its credits were released. Submit it again."
        )
        if job_fail(
            job, code=FailureCode.MESSAGE_LOST, message=message, fence=Q(attempt=job.attempt)
        ):
            done.failed.append(job.public_id)
        return False
    if not _unpublish(job, attempt=job.attempt + settings.SQS_MAX_RECEIVES, reason=reason):
        return False
    done.republished.append(job.public_id)
    return True


def _republished(job: Job) -> int:
    return job.events.filter(kind="republished").count()


def _unpublish(job: Job, *, attempt: int, reason: str) -> bool:
    """Make an in-flight job unpublished as `attempt`, above every attempt its last message ran as
    (so that whatever that message's workers still report is fenced out), with a `republished`
    event. True: publish it after commit."""
    changed = Job.objects.filter(pk=job.pk, status__in=Job.IN_FLIGHT, attempt=job.attempt).update(
        status=Job.Status.STARTING, attempt=attempt, published_at=None, progress_step=0
    )
    if not changed:
        return False
    record_event(job, "republished", attempt, reason=reason, previous_attempt=job.attempt)
    logger.warning("job %s is published again (%s)", job.public_id, reason)
    return True


def jobs_sweep_dead_lettered() -> Reconciled:
    """Settle the jobs whose message SQS dead-lettered: received SQS_MAX_RECEIVES times, never
    deleted.

    SQS counts receives, not runs. A delivery that ran and whose worker was lost (killed, out of
    host memory, or handing it back after an outage: a `received` event, then neither an outcome
    nor `preempted`) counts, and so does one that never ran: a message taken ahead for a batch, or
    answered to a long poll, and handed back when its worker stopped, or held by a worker that was
    killed (no `received` event). The events of the letter's own attempts decide (its attempt to
    attempt + SQS_MAX_RECEIVES - 1); one lost with its worker's process makes the delivery look
    unrun, so a job that kills its worker before its `received` is sent is published again, up to
    the limit, before it fails.
    Only a job whose workers were lost on every delivery is failed, `worker_lost` (a job that
    kills its worker). Any other is published again as the reconciler publishes a lost job (a
    `republished` event, at attempt + SQS_MAX_RECEIVES); after RECONCILE_MAX_REPUBLISHES in all
    it is failed `worker_lost` too. A failed job's credits are released.

    A letter is deleted only once its job was settled, so a crash here leaves it for the next
    sweep; a job final, or published again since the letter's message (a higher attempt), is not
    the letter's to settle.
    """
    done = Reconciled(unseen=[], republished=[], failed=[])
    for model in DiffusionModel.objects.all():  # a model disabled since still has its lost jobs
        for letter in receive_dead_letters(model.slug):
            try:
                _settle_dead_letter(letter, done)
            except Exception:  # left for the next sweep; the other letters go on
                logger.exception("dead-letter sweep: could not settle a letter of %s", model.slug)
                continue
            delete_dead_letter(letter)
    return done


@transaction.atomic
def _settle_dead_letter(letter: DeadLetter, done: Reconciled) -> None:
    message = letter.kwargs.get("job", {})
    first = int(message.get("attempt", 1))
    deliveries = settings.SQS_MAX_RECEIVES
    last = first + deliveries - 1  # the attempt of its last delivery
    job = (
        Job.objects.select_related("tenant__plan", "model")
        .filter(public_id=message.get("job_id", ""))
        .first()
    )
    if job is None:
        return
    lock_tenant(job.tenant)
    job.refresh_from_db(fields=["status", "attempt"])
    if job.status not in Job.IN_FLIGHT or job.attempt > last:
        return
    seen = list(
        job.events.filter(
            attempt__range=(first, last), kind__in=("received", "preempted")
        ).values_list("kind", "attempt")
    )
    ran = {attempt for kind, attempt in seen if kind == "received"}
    lost = len(ran - {attempt for kind, attempt in seen if kind == "preempted"})
    times = _republished(job)
    if lost < deliveries and times < settings.RECONCILE_MAX_REPUBLISHES:
        reason = (
            f"its message was dead-lettered after {deliveries} deliveries, of which its worker "
            f"was lost on {lost}; the others did not run it to an end"
        )
        # Above the letter's last delivery, and above what any other message of the job (a
        # duplicate publish at the row's attempt) can run as.
        attempt = max(job.attempt + deliveries, last + 1)
        if _unpublish(job, attempt=attempt, reason=reason):
            transaction.on_commit(functools.partial(jobs_publish, job_ids=[job.pk]))
            done.republished.append(job.public_id)
        return
    if lost == deliveries:
        failure = f"The worker was lost on each of {deliveries} deliveries of this job."
    else:
        failure = (
            f"The job's message was delivered {deliveries} times without the job ending (its "
            "workers were lost, or stopped before running it), and the job was published "
            f"{times + 1} times in all; its credits were released. Submit it again."
        )
    if job_fail(job, code=FailureCode.WORKER_LOST, message=failure, attempt=last):
        done.failed.append(job.public_id)
