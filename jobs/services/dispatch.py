"""Dispatch: admit queued jobs into a tenant's free slots, build the message a GPU worker gets,
publish it after commit, and sweep up the admitted jobs whose publish failed.

Admission runs under the tenant row lock, taken by its caller (`jobs.services.common.lock_tenant`).

Publishing leaves the caller's path (settings.PUBLISH_IN_BACKGROUND, on by default): after the
commit, the admitted ids go to this process's background publisher, whose thread publishes them
at once, so an API request never waits on SQS; what was handed over meanwhile goes together, up to
10 jobs of a queue in one SQS call. Nothing is lost if the process dies with ids in
hand: their jobs are committed and unpublished, and the sweeper publishes them.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.db.models import Q
from django.utils import timezone

from jobs import selectors
from jobs.models import DiffusionModel, Job, JobEvent, LoraAdapter
from jobs.services.common import lock_tenant
from jobs.services.scaling import pools_wake
from sdsaas import telemetry
from sdsaas.background import BackgroundBatches
from sdsaas.broker.batch import MAX_ENTRIES, Refusal, collecting, send_collected
from sdsaas.broker.sqs import (
    control_queue_name,
    ensure_model_queue,
    forget_queues,
    is_missing_queue,
    model_queue_name,
)
from sdsaas.celery import app as celery_app
from sdsaas.celery import publisher_pool
from sdsaas.contract import (
    TASK_FETCH_INPUT_IMAGE,
    TASK_GPU_GENERATE,
    GenerationInput,
    JobKind,
    JobMessage,
    LoraRef,
    ModelRef,
    job_output_prefix,
)
from tenants.models import Tenant

logger = logging.getLogger(__name__)


def jobs_admit(
    *, tenant: Tenant, events: Sequence[JobEvent] = (), now: dt.datetime | None = None
) -> list[int]:
    """Move the tenant's oldest queued jobs to `starting` while it is under its concurrency cap;
    the ids admitted, whose `admitted_at` is `now`.

    Call inside a transaction that holds the tenant lock (`lock_tenant`). `events`, the caller's
    own, are written in the same INSERT as the `admitted` ones, before them. Publishing happens
    after commit. Costs three statements and the INSERT, each bounded by the plan's cap rather
    than by the tenant's backlog of queued jobs.
    """
    cap = tenant.plan.max_concurrent_jobs
    free = cap - selectors.jobs_in_flight_count(tenant=tenant, up_to=cap)
    ids: list[int] = []
    if free > 0:
        ids = list(
            Job.objects.filter(tenant=tenant, status=Job.Status.QUEUED)
            .order_by("id")
            .values_list("id", flat=True)[:free]
        )
    if ids:
        Job.objects.filter(id__in=ids, status=Job.Status.QUEUED).update(
            status=Job.Status.STARTING, admitted_at=now or timezone.now(), attempt=1
        )
        transaction.on_commit(lambda: publish_after_commit(job_ids=ids))
    admitted = [JobEvent(job_id=i, kind="admitted", attempt=1) for i in ids]
    if events or admitted:
        JobEvent.objects.bulk_create([*events, *admitted])
    return ids


def publish_after_commit(*, job_ids: list[int]) -> None:
    """Publish admitted jobs: by this process's background publisher, or here."""
    if settings.PUBLISH_IN_BACKGROUND:
        background_publisher().put(job_ids)
    else:
        jobs_publish(job_ids=job_ids)


def _publish_in_background(job_ids: list[int]) -> None:
    # What fails is logged by the thread; the jobs stay unpublished, for the sweeper.
    jobs_publish(job_ids=job_ids)


@functools.cache
def background_publisher() -> BackgroundBatches[int]:
    """This process's publisher thread: the ids handed over since its last batch go together.

    It keeps its database connection between batches (CONN_MAX_AGE) until it is stopped.
    """
    publisher = BackgroundBatches(
        "job-publisher",
        _publish_in_background,
        after_batch=close_old_connections,
        at_stop=connections.close_all,
    )
    # A process that ends normally (a gunicorn worker recycled) publishes what it holds first.
    atexit.register(publisher.stop, timeout=5)
    return publisher


def job_time_limit_s(*, model: DiffusionModel, params: GenerationInput) -> float:
    """How long the job may run on a GPU worker, from its model's budget and the request.

    Denoising costs about steps x images x pixels; the model's base covers the rest. The worker
    holds it to its own ceiling too (SDSAAS_GPU_JOB_TIME_LIMIT_S).
    """
    pixels = params.width * params.height / (512 * 512)
    denoising = model.time_limit_step_s * params.steps * params.num_outputs * pixels
    return round(model.time_limit_base_s + denoising, 3)


def job_message(*, job: Job) -> JobMessage:
    """Everything a GPU worker needs, and nothing secret: it has no database access."""
    model = job.model
    params = GenerationInput.from_wire(job.input)
    sources = {
        lora.slug: lora
        for lora in LoraAdapter.objects.filter(slug__in=[item.slug for item in params.loras])
    }
    return JobMessage(
        job_id=job.public_id,
        attempt=job.attempt,
        kind=JobKind(job.kind),
        input=params,
        model=ModelRef(
            slug=model.slug,
            family=model.family,
            source_uri=model.source_uri,
            revision=model.revision,
            sha256=model.sha256,
        ),
        loras=tuple(
            LoraRef(
                slug=item.slug,
                weight=item.weight,
                source_uri=sources[item.slug].source_uri,
                sha256=sources[item.slug].sha256,
            )
            for item in params.loras
        ),
        init_image_key=job.init_image_key,
        output_prefix=job_output_prefix(job.tenant_id, job.public_id),
        created_at=job.created_at.isoformat(),
        time_limit_s=job_time_limit_s(model=model, params=params),
        trace_parent=job.trace_parent,
    )


def jobs_publish(*, job_ids: Iterable[int], claimed: dt.datetime | None = None) -> int:
    """Send admitted, unpublished jobs to their model queues; return how many were sent.

    The jobs of one queue go together, in SendMessageBatch calls of up to 10 (`_send_batch`), and
    each call's jobs are marked published in one UPDATE. A failure leaves `published_at` empty for
    the sweeper: the job is committed, the caller (an API request after commit) must not fail,
    and the broker's outage must not lose it. A job whose message cannot be made (a bug) is
    logged and left unpublished, without holding the others back. `claimed`: the jobs were
    claimed by the sweeper (their `published_at` set to it); those it does not send are
    unpublished again.
    """
    job_ids = list(job_ids)
    unpublished = Q(published_at__isnull=True) if claimed is None else Q(published_at=claimed)
    by_queue: dict[tuple[str, str | None], list[tuple[Job, str, dict[str, Any]]]] = {}
    jobs = Job.objects.select_related("model").filter(
        unpublished, id__in=job_ids, status=Job.Status.STARTING
    )
    try:
        for job in jobs.order_by("id"):
            try:
                destination, task, kwargs = _task_of(job)
            except Exception:
                logger.exception("the message of %s could not be made", job.public_id)
                continue
            by_queue.setdefault(destination, []).append((job, task, kwargs))
        sent, to_wake = _publish_by_queue(by_queue, unpublished=unpublished)
    finally:
        if claimed is not None:
            Job.objects.filter(id__in=job_ids, published_at=claimed).update(published_at=None)
    if to_wake:  # scale from zero: a model's first job in a while does not wait for the beat
        # After the caller's commit: the wake's calls to CloudWatch and ECS must not hold its
        # locks, nor its failure roll it back.
        transaction.on_commit(lambda: pools_wake(model_ids=to_wake))
    return sent


def _task_of(job: Job) -> tuple[tuple[str, str | None], str, dict[str, Any]]:
    """Where a job's task goes (its queue, and its model's slug for a model queue), its name and
    its keyword arguments."""
    if job.init_image_url and not job.init_image_key:
        # The control worker fetches the image into S3 first; it then marks the job unpublished
        # again and publishes it to its model's queue.
        return (control_queue_name(), None), TASK_FETCH_INPUT_IMAGE, {"job_pk": job.pk}
    message = job_message(job=job).to_wire()
    return (model_queue_name(job.model.slug), job.model.slug), TASK_GPU_GENERATE, {"job": message}


def _publish_by_queue(
    by_queue: dict[tuple[str, str | None], list[tuple[Job, str, dict[str, Any]]]],
    *,
    unpublished: Q,
) -> tuple[int, set[int]]:
    """Send each queue's jobs in chunks; how many were sent, and the models (ids) of the GPU
    jobs sent. A queue's first chunk that fails ends that queue's sends (SQS, or that queue, is
    down for the rest of them too), not the other queues': a queue that keeps failing (one not
    created yet) must not hold every other model's jobs back."""
    sent, models = 0, set[int]()
    with publisher_pool().acquire(block=True, timeout=30) as connection:
        for (queue, model_slug), items in by_queue.items():
            for start in range(0, len(items), MAX_ENTRIES):
                published = _publish_chunk(
                    items[start : start + MAX_ENTRIES],
                    queue=queue,
                    model_slug=model_slug,
                    connection=connection,
                    unpublished=unpublished,
                )
                if published is None:
                    break
                sent += published
                if published and model_slug is not None:
                    models.add(items[0][0].model_id)
    return sent, models


def _publish_chunk(
    items: list[tuple[Job, str, dict[str, Any]]],
    *,
    queue: str,
    model_slug: str | None,
    connection: Any,
    unpublished: Q,
) -> int | None:
    """Send one batch of jobs and mark those SQS took published; how many, None if it failed."""
    try:
        refused = _send_batch(
            [(task, kwargs, job.trace_parent) for job, task, kwargs in items],
            queue=queue,
            model_slug=model_slug,
            connection=connection,
        )
    except Exception as exc:  # any broker failure: the sweeper publishes them later
        logger.warning(
            "publish of %s failed (%s: %s); the sweeper will publish it",
            ", ".join(job.public_id for job, _, _ in items),
            exc.__class__.__name__,
            exc,
        )
        return None
    published = []
    for (job, _, _), reason in zip(items, refused, strict=True):
        if reason is None:
            published.append(job.pk)
        else:
            logger.warning("SQS refused %s (%s); the sweeper publishes it", job.public_id, reason)
    Job.objects.filter(unpublished, pk__in=published).update(published_at=timezone.now())
    return len(published)


def _send_batch(
    tasks: list[tuple[str, dict[str, Any], str]],
    *,
    queue: str,
    model_slug: str | None,
    connection: Any,
) -> list[Refusal | None]:
    """Send up to 10 tasks (name, keyword arguments, the job's traceparent) to one queue in one
    SendMessageBatch call; for each, None if sent, else why SQS refused it. The messages are the
    ones `send_task` makes (`sdsaas.broker.batch`), each with its job's trace context in its
    message attributes.

    A queue that does not exist (deleted, purged by recreation, or a local SQS server started anew
    while this process cached its URL) is created again and the batch sent again once: a missing
    queue is the platform's trouble, never the job's."""
    for last_try in (False, True):
        if model_slug is not None:
            ensure_model_queue(model_slug)  # with its dead-letter queue, redrive and timeout
        try:
            with collecting(connection) as collected:
                for task, kwargs, trace_parent in tasks:
                    celery_app.send_task(
                        task,
                        kwargs=kwargs,
                        queue=queue,
                        connection=connection,
                        retry=False,
                        **telemetry.task_options(trace_parent),
                    )
            return send_collected(collected)
        except Exception as exc:
            if last_try or not is_missing_queue(exc):
                raise
            logger.warning("queue %s does not exist: creating it again", queue)
            forget_queues(connection)
    raise AssertionError("unreachable: the last try returns or raises")


def jobs_sweep_unpublished(*, older_than: dt.timedelta) -> int:
    """Publish admitted jobs whose publish failed, and admit tenants with free slots.

    The jobs are claimed first (SKIP LOCKED, their `published_at` set to the claim's time, in a
    transaction of its own), so two sweepers never publish the same job, and then published with
    no lock held: a cancel or an event of the tenant never waits on SQS (an outage can hold a send
    for half a minute). What is not sent is unpublished again; a claim whose sweeper died before
    it sent anything leaves its jobs published with no message, which the reconciler notices.
    """
    cutoff = timezone.now() - older_than
    claimed = timezone.now()
    with transaction.atomic():
        ids = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(status=Job.Status.STARTING, published_at__isnull=True, admitted_at__lte=cutoff)
            .order_by("id")
            .values_list("id", flat=True)[:500]
        )
        Job.objects.filter(id__in=ids).update(published_at=claimed)
    sent = jobs_publish(job_ids=ids, claimed=claimed)
    for tenant in Tenant.objects.filter(jobs__status=Job.Status.QUEUED).distinct():
        with transaction.atomic():
            lock_tenant(tenant)
            jobs_admit(tenant=tenant)
    return sent
