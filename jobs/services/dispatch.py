"""Dispatch: admit queued jobs into a tenant's free slots, build the message a GPU worker gets,
publish it after commit, and sweep up the admitted jobs whose publish failed.

Admission locks the tenant row first (`jobs.services.common.lock_tenant`).

Publishing leaves the caller's path (settings.PUBLISH_IN_BACKGROUND, on by default): after the
commit, the admitted ids go to this process's background publisher, whose thread publishes them
at once, so an API request never waits on SQS. Nothing is lost if the process dies with ids in
hand: their jobs are committed and unpublished, and the sweeper publishes them.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import logging
import os
import queue
import threading
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.utils import timezone

from jobs import selectors
from jobs.models import DiffusionModel, Job, JobEvent, LoraAdapter
from jobs.services.common import lock_tenant
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


def jobs_admit(*, tenant: Tenant) -> list[int]:
    """Move the tenant's oldest queued jobs to `starting` while it is under its concurrency cap.

    Call inside a transaction that holds the tenant lock. Publishing happens after commit.
    """
    lock_tenant(tenant)
    in_flight = selectors.jobs_in_flight_count(tenant=tenant)
    free = tenant.plan.max_concurrent_jobs - in_flight
    if free <= 0:
        return []
    ids = list(
        Job.objects.filter(tenant=tenant, status=Job.Status.QUEUED)
        .order_by("id")
        .values_list("id", flat=True)[:free]
    )
    if not ids:
        return []
    Job.objects.filter(id__in=ids, status=Job.Status.QUEUED).update(
        status=Job.Status.STARTING, admitted_at=timezone.now(), attempt=1
    )
    JobEvent.objects.bulk_create([JobEvent(job_id=i, kind="admitted", attempt=1) for i in ids])
    transaction.on_commit(lambda: publish_after_commit(job_ids=ids))
    return ids


def publish_after_commit(*, job_ids: list[int]) -> None:
    """Publish admitted jobs: by this process's background publisher, or here."""
    if settings.PUBLISH_IN_BACKGROUND:
        background_publisher().submit(job_ids)
    else:
        jobs_publish(job_ids=job_ids)


class BackgroundPublisher:
    """One thread per process that publishes the ids handed to it, in batches, as they come.

    Started on first use in the process that uses it (a forked process starts its own), it keeps
    its database connection between batches (CONN_MAX_AGE) until `stop`.
    """

    def __init__(self) -> None:
        self._ids: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._pending = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, job_ids: list[int]) -> None:
        with self._changed:
            forked = self._pid != os.getpid()
            if forked or self._thread is None or not self._thread.is_alive():
                if forked:  # what the parent held is the parent's to publish
                    self._pid, self._pending, self._ids = os.getpid(), 0, queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="job-publisher", daemon=True)
                self._thread.start()
            self._pending += len(job_ids)
        for job_id in job_ids:
            self._ids.put(job_id)

    def flush(self, timeout: float) -> bool:
        """Wait until every id handed over so far was published (or failed); whether it was."""
        with self._changed:
            return self._changed.wait_for(lambda: self._pending == 0, timeout=timeout)

    def stop(self, timeout: float) -> None:
        """Publish what was handed over, then end the thread and close its connection."""
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            self._ids.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._ids.get()]
            while not self._ids.empty():
                batch.append(self._ids.get_nowait())
            ids = [job_id for job_id in batch if job_id is not None]
            try:
                if ids:
                    jobs_publish(job_ids=ids)
            except Exception:  # the jobs stay unpublished: the sweeper publishes them
                logger.exception("background publish of %d jobs failed", len(ids))
            finally:
                with self._changed:
                    self._pending -= len(ids)
                    self._changed.notify_all()
            if len(ids) < len(batch):  # stopped
                connections.close_all()
                return
            close_old_connections()


@functools.cache
def background_publisher() -> BackgroundPublisher:
    publisher = BackgroundPublisher()
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
    )


def jobs_publish(*, job_ids: Iterable[int]) -> int:
    """Send admitted, unpublished jobs to their model queues; return how many were sent.

    A failure leaves `published_at` empty for the sweeper: the job is committed, the caller (an API
    request after commit) must not fail, and the broker's outage must not lose it.
    """
    sent = 0
    jobs = Job.objects.select_related("model").filter(
        id__in=list(job_ids), status=Job.Status.STARTING, published_at__isnull=True
    )
    with publisher_pool().acquire(block=True, timeout=30) as connection:
        for job in jobs.order_by("id"):
            try:
                kwargs: dict[str, Any]
                if job.init_image_url and not job.init_image_key:
                    # The control worker fetches the image into S3 first; it then marks the job
                    # unpublished again and publishes it to its model's queue.
                    task, kwargs = TASK_FETCH_INPUT_IMAGE, {"job_pk": job.pk}
                    queue, model_slug = control_queue_name(), None
                else:
                    task, kwargs = TASK_GPU_GENERATE, {"job": job_message(job=job).to_wire()}
                    queue, model_slug = model_queue_name(job.model.slug), job.model.slug
                _send(
                    task, kwargs=kwargs, queue=queue, model_slug=model_slug, connection=connection
                )
            except Exception as exc:  # any broker failure: the sweeper publishes it later
                logger.warning(
                    "publish of %s failed (%s: %s); the sweeper will publish it",
                    job.public_id,
                    exc.__class__.__name__,
                    exc,
                )
                break  # the broker is down for the rest too
            Job.objects.filter(pk=job.pk, published_at__isnull=True).update(
                published_at=timezone.now()
            )
            sent += 1
    return sent


def _send(
    task: str, *, kwargs: dict[str, Any], queue: str, model_slug: str | None, connection: Any
) -> None:
    """Send one task; a queue that does not exist (deleted, purged by recreation, or a local SQS
    server started anew while this process cached its URL) is created again and the send retried
    once: a missing queue is the platform's trouble, never the job's."""
    for last_try in (False, True):
        if model_slug is not None:
            ensure_model_queue(model_slug)  # with its dead-letter queue, redrive and timeout
        try:
            celery_app.send_task(
                task, kwargs=kwargs, queue=queue, connection=connection, retry=False
            )
            return
        except Exception as exc:
            if last_try or not is_missing_queue(exc):
                raise
            logger.warning("queue %s does not exist: creating it again", queue)
            forget_queues(connection)


def jobs_sweep_unpublished(*, older_than: dt.timedelta) -> int:
    """Publish admitted jobs whose publish failed, and admit tenants with free slots.

    Rows are locked with SKIP LOCKED while they are published, so two sweepers never publish the
    same job; a job is sent again only if this process dies between the send and the commit.
    """
    cutoff = timezone.now() - older_than
    with transaction.atomic():
        ids = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(status=Job.Status.STARTING, published_at__isnull=True, admitted_at__lte=cutoff)
            .order_by("id")
            .values_list("id", flat=True)[:500]
        )
        sent = jobs_publish(job_ids=ids)
    for tenant in Tenant.objects.filter(jobs__status=Job.Status.QUEUED).distinct():
        with transaction.atomic():
            jobs_admit(tenant=tenant)
    return sent
