"""Writes for jobs, uploads and the catalog: the job state machine, admission and publishing.

Lock order, to stay free of deadlocks: every service that changes a tenant's jobs or credits
locks the tenant row first (`_lock_tenant`), then touches credit and job rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import ipaddress
import json
import logging
import secrets
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from PIL import Image, UnidentifiedImageError

from jobs import selectors
from jobs.models import (
    DiffusionModel,
    IdempotencyRecord,
    Job,
    JobEvent,
    LoraAdapter,
    Upload,
    public_id,
)
from sdsaas.celery import app as celery_app
from sdsaas.celery import publisher_pool
from sdsaas.errors import Conflict, IdempotencyKeyReused, InvalidInput, PayloadTooLarge
from sdsaas.queues import (
    TASK_FETCH_INPUT_IMAGE,
    TASK_GPU_GENERATE,
    cancel_marker_key,
    control_queue_name,
    job_output_prefix,
    model_queue_name,
)
from sdsaas.safe_http import FetchError, address_is_public, fetch
from sdsaas.sqs import (
    dead_letter_queue_name,
    delete_dead_letter,
    ensure_model_queue,
    forget_queues,
    is_missing_queue,
    queue_depth,
    receive_dead_letters,
)
from tenants.models import Tenant
from tenants.services import credits_release, credits_reserve, rate_limit_hit, usage_record_images

logger = logging.getLogger(__name__)

SEED_MAX = 2**32 - 1
DEFAULT_STRENGTH = 0.8
UPLOAD_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def _lock_tenant(tenant: Tenant) -> None:
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()


def _event(job: Job | int, kind: str, attempt: int, **detail: Any) -> None:
    job_id = job if isinstance(job, int) else job.pk
    JobEvent.objects.create(job_id=job_id, kind=kind, attempt=attempt, detail=detail)


# --- idempotency ---------------------------------------------------------------------------------

T = TypeVar("T")


def request_fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _idempotent_create(
    *,
    tenant: Tenant,
    scope: str,
    key: str | None,
    fingerprint: str,
    create: Callable[[], T],
    replay: Callable[[IdempotencyRecord], T],
) -> tuple[T, bool]:
    """Run `create` once per (tenant, scope, key) within the TTL; return (object, created).

    The key's record is inserted first, in the same transaction as the object: a concurrent
    request with the same key blocks on the unique index until the first one commits, then
    fails with IntegrityError and is answered with the first request's object.
    """
    if key is None:
        with transaction.atomic():
            return create(), True
    for _ in range(2):
        try:
            with transaction.atomic():
                cutoff = timezone.now() - dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
                IdempotencyRecord.objects.filter(
                    tenant=tenant, scope=scope, key=key, created_at__lt=cutoff
                ).delete()
                existing = IdempotencyRecord.objects.filter(
                    tenant=tenant, scope=scope, key=key
                ).first()
                if existing is not None:
                    if existing.request_hash != fingerprint:
                        raise IdempotencyKeyReused(
                            "This Idempotency-Key was used with a different request body.",
                        )
                    return replay(existing), False
                record = IdempotencyRecord.objects.create(
                    tenant=tenant, scope=scope, key=key, request_hash=fingerprint
                )
                created = create()
                field = "job" if isinstance(created, Job) else "upload"
                setattr(record, field, created)
                record.save(update_fields=[field])
                return created, True
        except IntegrityError:
            continue  # a concurrent request with the same key committed first: replay it
    raise Conflict("A concurrent request with this Idempotency-Key is still in progress.")


# --- uploads -------------------------------------------------------------------------------------


def _decode_image(data: bytes) -> tuple[Image.Image, str]:
    """Open and fully decode, refusing other formats and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in UPLOAD_FORMATS:
                raise InvalidInput("file", "must be a PNG, JPEG or WebP image")
            if image.width * image.height > settings.UPLOAD_MAX_PIXELS:
                raise InvalidInput(
                    "file",
                    f"image of {image.width}x{image.height} exceeds "
                    f"{settings.UPLOAD_MAX_PIXELS} pixels",
                )
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput("file", f"is not a readable image ({exc.__class__.__name__})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidInput("file", "image has too many pixels (decompression bomb)") from None
    return image, UPLOAD_FORMATS[str(image.format)]


def upload_create(
    *, tenant: Tenant, data: bytes, idempotency_key: str | None = None
) -> tuple[Upload, bool]:
    rate_limit_hit(tenant=tenant)
    if len(data) > settings.UPLOAD_MAX_BYTES:
        raise PayloadTooLarge(f"file exceeds {settings.UPLOAD_MAX_BYTES} bytes")
    if not data:
        raise InvalidInput("file", "is empty")
    digest = hashlib.sha256(data).hexdigest()

    def create() -> Upload:
        image, ext = _decode_image(data)
        upload_id = public_id("upl")
        key = default_storage.save(
            f"tenants/{tenant.pk}/uploads/{upload_id}.{ext}", ContentFile(data)
        )
        return Upload.objects.create(
            public_id=upload_id,
            tenant=tenant,
            storage_key=key,
            content_type=Image.MIME[str(image.format)],
            width=image.width,
            height=image.height,
            size_bytes=len(data),
            sha256=digest,
        )

    return _idempotent_create(
        tenant=tenant,
        scope=IdempotencyRecord.Scope.UPLOAD_CREATE,
        key=idempotency_key,
        fingerprint=digest,
        create=create,
        replay=_replayed_upload,
    )


def _replayed_upload(record: IdempotencyRecord) -> Upload:
    assert record.upload is not None, "upload records are saved with their upload"
    return record.upload


# --- submit --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedInput:
    model: DiffusionModel
    kind: str
    input: dict[str, Any]
    init_image_key: str
    init_image_url: str


def _resolve_loras(
    *, tenant: Tenant, model: DiffusionModel, requested: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    requested = list(requested)
    slugs = [item["slug"] for item in requested]
    if len(set(slugs)) != len(slugs):
        raise InvalidInput("loras", "each LoRA may be given once")
    found = {lora.slug: lora for lora in selectors.lora_list(tenant=tenant).filter(slug__in=slugs)}
    resolved = []
    for index, item in enumerate(requested):
        lora: LoraAdapter | None = found.get(item["slug"])
        if lora is None:
            raise InvalidInput(f"loras[{index}].slug", f"unknown LoRA {item['slug']!r}")
        if lora.family != model.family:
            raise InvalidInput(
                f"loras[{index}].slug",
                f"LoRA {lora.slug!r} is for {lora.family}, model {model.slug!r} is {model.family}",
            )
        weight = item.get("weight")
        resolved.append(
            {"slug": lora.slug, "weight": lora.default_weight if weight is None else weight}
        )
    return resolved


def _check_side(name: str, value: int, model: DiffusionModel) -> None:
    if not model.min_side <= value <= model.max_side:
        raise InvalidInput(
            name,
            f"must be between {model.min_side} and {model.max_side} for model {model.slug!r}",
        )


def _check_image_url_host(url: str) -> None:
    """Refuse an address literal we would never fetch now; names are checked at fetch time."""
    host = (urlsplit(url).hostname or "").lower()
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return
    if not address_is_public(literal) and host not in settings.IMAGE_FETCH_ALLOW_HOSTS:
        raise InvalidInput("image", "must not point to a private, loopback or link-local address")


def job_resolve_input(*, tenant: Tenant, data: dict[str, Any]) -> ResolvedInput:
    """Apply the model's defaults, check model and plan bounds, choose the seed."""
    model = selectors.model_get(tenant=tenant, slug=data["model"])
    if model is None:
        raise InvalidInput("model", f"unknown model {data['model']!r}")
    plan = tenant.plan
    width = data.get("width") or model.default_width
    height = data.get("height") or model.default_height
    _check_side("width", width, model)
    _check_side("height", height, model)
    if width * height > plan.max_pixels:
        raise InvalidInput(
            "width", f"{width}x{height} exceeds your plan's cap of {plan.max_pixels} pixels"
        )
    steps = data.get("steps") or model.default_steps
    max_steps = min(model.max_steps, plan.max_steps)
    if steps > max_steps:
        raise InvalidInput("steps", f"must be at most {max_steps} for this model and plan")
    seed = data.get("seed")
    image = data.get("image") or ""
    init_key = init_url = ""
    if image.startswith("upl_"):
        upload = selectors.upload_get(tenant=tenant, public_id=image)
        if upload is None:
            raise InvalidInput("image", f"unknown upload {image!r}")
        init_key = upload.storage_key
    elif image:
        _check_image_url_host(image)
        init_url = image
    if data.get("strength") is not None and not image:
        raise InvalidInput("strength", "applies to img2img only: give an image")
    resolved: dict[str, Any] = {
        "prompt": data["prompt"],
        "negative_prompt": data.get("negative_prompt") or "",
        "width": width,
        "height": height,
        "steps": steps,
        "guidance": model.default_guidance if data.get("guidance") is None else data["guidance"],
        "scheduler": data.get("scheduler") or model.default_scheduler,
        "num_outputs": data.get("num_outputs") or 1,
        "seed": secrets.randbelow(SEED_MAX + 1) if seed is None else seed,
        "loras": _resolve_loras(tenant=tenant, model=model, requested=data.get("loras") or []),
        "output_format": data.get("output_format") or "png",
    }
    if image:
        resolved["image"] = image
        strength = data.get("strength")
        resolved["strength"] = DEFAULT_STRENGTH if strength is None else strength
        if int(steps * resolved["strength"]) < 1:  # img2img runs steps x strength steps
            raise InvalidInput(
                "strength", f"with {steps} steps it must be at least {1 / steps:.4g}"
            )
    return ResolvedInput(
        model=model,
        kind=Job.Kind.IMG2IMG if image else Job.Kind.TXT2IMG,
        input=resolved,
        init_image_key=init_key,
        init_image_url=init_url,
    )


def job_submit(
    *, tenant: Tenant, data: dict[str, Any], idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Create a job (credits reserved, admitted if the tenant has a free slot); (job, created).

    The job is published to its model's queue only after this transaction commits.
    """
    rate_limit_hit(tenant=tenant)

    def create() -> Job:
        _lock_tenant(tenant)
        resolved = job_resolve_input(tenant=tenant, data=data)
        amount = resolved.input["num_outputs"]
        month = credits_reserve(tenant=tenant, amount=amount)
        job = Job.objects.create(
            public_id=public_id("job"),
            tenant=tenant,
            model=resolved.model,
            kind=resolved.kind,
            input=resolved.input,
            init_image_key=resolved.init_image_key,
            init_image_url=resolved.init_image_url,
            credits_reserved=amount,
            credit_month=month,
        )
        _event(job, "created", 0)
        jobs_admit(tenant=tenant)
        job.refresh_from_db()
        return job

    return _idempotent_create(
        tenant=tenant,
        scope=IdempotencyRecord.Scope.JOB_CREATE,
        key=idempotency_key,
        fingerprint=request_fingerprint(data),
        create=create,
        replay=_replayed_job,
    )


def _replayed_job(record: IdempotencyRecord) -> Job:
    assert record.job is not None, "job records are saved with their job"
    return record.job


# --- admission and publishing --------------------------------------------------------------------


def jobs_admit(*, tenant: Tenant) -> list[int]:
    """Move the tenant's oldest queued jobs to `starting` while it is under its concurrency cap.

    Call inside a transaction that holds the tenant lock. Publishing happens after commit.
    """
    _lock_tenant(tenant)
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
    transaction.on_commit(lambda: jobs_publish(job_ids=ids))
    return ids


def job_time_limit_s(*, model: DiffusionModel, params: dict[str, Any]) -> float:
    """How long the job may run on a GPU worker, from its model's budget and the request.

    Denoising costs about steps x images x pixels; the model's base covers the rest. The worker
    holds it to its own ceiling too (SDSAAS_GPU_JOB_TIME_LIMIT_S).
    """
    pixels = params["width"] * params["height"] / (512 * 512)
    denoising = model.time_limit_step_s * params["steps"] * params["num_outputs"] * pixels
    return round(model.time_limit_base_s + denoising, 3)


def job_message(*, job: Job) -> dict[str, Any]:
    """Everything a GPU worker needs, and nothing secret: it has no database access."""
    model = job.model
    loras = {
        lora.slug: lora
        for lora in LoraAdapter.objects.filter(
            slug__in=[item["slug"] for item in job.input.get("loras", [])]
        )
    }
    return {
        "job_id": job.public_id,
        "attempt": job.attempt,
        "kind": job.kind,
        "input": job.input,
        "model": {
            "slug": model.slug,
            "family": model.family,
            "source_uri": model.source_uri,
            "revision": model.revision,
            "sha256": model.sha256,
        },
        "loras": [
            {
                "slug": item["slug"],
                "weight": item["weight"],
                "source_uri": loras[item["slug"]].source_uri,
                "sha256": loras[item["slug"]].sha256,
            }
            for item in job.input.get("loras", [])
        ],
        "init_image_key": job.init_image_key,
        "output_prefix": job_output_prefix(job.tenant_id, job.public_id),
        "created_at": job.created_at.isoformat(),
        "time_limit_s": job_time_limit_s(model=model, params=job.input),
    }


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
                    task, kwargs = TASK_FETCH_INPUT_IMAGE, {"job_id": job.pk}
                    queue, model_slug = control_queue_name(), None
                else:
                    task, kwargs = TASK_GPU_GENERATE, {"job": job_message(job=job)}
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


def job_fetch_input_image(*, job_id: int, last_try: bool) -> None:
    """Fetch an admitted img2img job's https image into S3 under the job, then publish the job.

    Safe to run twice: once the image is stored, a second run finds it and does nothing, and a
    late failure cannot touch a job that is already on its way to a GPU. Raises when a retry may
    help and this is not the last try; otherwise a refused or unreadable image fails the job.
    """
    job = Job.objects.select_related("tenant", "model").filter(pk=job_id).first()
    if job is None or job.status != Job.Status.STARTING or job.init_image_key:
        return  # canceled or finished meanwhile, or another run stored the image
    try:
        fetched = fetch(
            job.init_image_url,
            max_bytes=settings.UPLOAD_MAX_BYTES,
            allow_hosts=settings.IMAGE_FETCH_ALLOW_HOSTS,
            ca_file=settings.IMAGE_FETCH_CA_FILE,
            timeout=settings.IMAGE_FETCH_TIMEOUT_S,
        )
        _image, ext = _decode_image(fetched.data)
        prefix = job_output_prefix(job.tenant_id, job.public_id)
        key = default_storage.save(f"{prefix}input.{ext}", ContentFile(fetched.data))
    except FetchError as exc:
        if exc.retryable and not last_try:
            raise
        _fail_before_dispatch(job, "image_fetch_failed", f"image: {exc.message}")
        return
    except InvalidInput as exc:
        _fail_before_dispatch(job, "invalid_input", exc.message.replace("file:", "image:", 1))
        return
    except Exception:  # storage trouble, say: retried, and the job must not wait for ever
        if not last_try:
            raise
        _fail_before_dispatch(job, "internal_error", "image: could not be stored; try again")
        return
    # The image and "not yet published" in one conditional write: a crash before the publish
    # below leaves the job to the sweeper, and a concurrent run of this task stops here.
    stored = Job.objects.filter(pk=job.pk, status=Job.Status.STARTING, init_image_key="").update(
        init_image_key=key, published_at=None
    )
    if stored:
        jobs_publish(job_ids=[job.pk])


@transaction.atomic
def _fail_before_dispatch(job: Job, code: str, message: str) -> None:
    """Fail a job whose input could not be fetched, unless another run already dispatched it."""
    _fail(job, code=code, message=message, fence=Q(status=Job.Status.STARTING, init_image_key=""))


def _fail(
    job: Job, *, code: str, message: str, attempt: int | None = None, fence: Q | None = None
) -> bool:
    fields = {"error_code": code, "error_message": message[:2000]}
    return _finish(
        job=job, status=Job.Status.FAILED, attempt=attempt, fields=fields, produced=0, fence=fence
    )


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


# --- state machine -------------------------------------------------------------------------------


def _finish(
    *,
    job: Job,
    status: str,
    attempt: int | None,
    fields: dict[str, Any],
    produced: int,
    fence: Q | None = None,
) -> bool:
    """Move a job to a final state once; meter or release its credits; admit the next job.

    `fence` narrows which rows may change (on top of "not final" and the attempt).
    """
    _lock_tenant(job.tenant)
    fence = Q(pk=job.pk) & ~Q(status__in=Job.FINAL) & (fence or Q())
    if attempt is not None:
        fence &= Q(attempt__lte=attempt)
    now = timezone.now()
    changed = Job.objects.filter(fence).update(status=status, completed_at=now, **fields)
    if not changed:
        return False
    if produced:
        usage_record_images(
            tenant=job.tenant,
            job_id=job.pk,
            month=job.credit_month,
            reserved=job.credits_reserved,
            produced=produced,
            model_slug=job.model.slug,
        )
    else:
        credits_release(tenant=job.tenant, month=job.credit_month, amount=job.credits_reserved)
    _event(job, status, attempt or job.attempt, **{k: v for k, v in fields.items() if "error" in k})
    jobs_admit(tenant=job.tenant)
    return True


@transaction.atomic
def job_cancel(*, tenant: Tenant, job_public_id: str) -> Job:
    """Cancel a job that is not final; canceling a canceled job changes nothing."""
    _lock_tenant(tenant)
    job = selectors.job_get(tenant=tenant, public_id=job_public_id)
    if job.status == Job.Status.CANCELED:
        return job
    if job.is_final:
        raise Conflict(f"Job {job.public_id} is already {job.status}.")
    admitted = job.status != Job.Status.QUEUED
    _finish(job=job, status=Job.Status.CANCELED, attempt=None, fields={}, produced=0)
    if admitted:  # its message may be in a queue or on a worker: tell the worker
        marker = cancel_marker_key(job_output_prefix(job.tenant_id, job.public_id))
        transaction.on_commit(lambda: _write_cancel_marker(marker))
    job.refresh_from_db()
    return job


def _write_cancel_marker(key: str) -> None:
    try:
        default_storage.save(key, ContentFile(b"canceled"))
    except Exception as exc:  # the job is canceled regardless; its worker finishes in vain
        logger.warning("could not write cancel marker %s: %s", key, exc)


def _job_for_event(job_public_id: str) -> Job | None:
    return (
        Job.objects.select_related("tenant__plan", "model").filter(public_id=job_public_id).first()
    )


@transaction.atomic
def job_mark_received(*, job_public_id: str, attempt: int) -> bool:
    """A worker received the job's message as attempt `attempt`: one `received` event per delivery.

    Sent before the model is loaded, so deliveries that kill their worker count too. A newer
    attempt takes the job back to `starting` (its previous worker is gone). Older attempts, a
    duplicate of this event and final jobs change nothing.
    """
    # The row lock makes a concurrent duplicate wait, then find the event below.
    job = (
        Job.objects.select_for_update()
        .filter(public_id=job_public_id, status__in=Job.IN_FLIGHT, attempt__lte=attempt)
        .first()
    )
    if job is None or job.events.filter(kind="received", attempt=attempt).exists():
        return False
    if attempt > job.attempt:
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.STARTING, attempt=attempt, progress_step=0
        )
    _event(job, "received", attempt)
    return True


@transaction.atomic
def job_mark_started(*, job_public_id: str, attempt: int, load_s: float) -> bool:
    """A worker began attempt `attempt`. Older attempts and final jobs change nothing."""
    job = _job_for_event(job_public_id)
    if job is None:
        return False
    newer = Q(attempt__lt=attempt) | Q(attempt=attempt, status=Job.Status.STARTING)
    changed = Job.objects.filter(newer, pk=job.pk, status__in=Job.IN_FLIGHT).update(
        status=Job.Status.PROCESSING,
        attempt=attempt,
        started_at=timezone.now(),
        metrics={**job.metrics, "load_s": load_s},
    )
    if changed:
        _event(job, "started", attempt, load_s=load_s)
    return bool(changed)


def job_mark_progress(*, job_public_id: str, attempt: int, step: int, total: int) -> bool:
    return bool(
        Job.objects.filter(
            public_id=job_public_id, status=Job.Status.PROCESSING, attempt=attempt
        ).update(progress_step=step, progress_total=total)
    )


@transaction.atomic
def job_mark_succeeded(
    *, job_public_id: str, attempt: int, output_keys: list[str], metrics: dict[str, float]
) -> bool:
    """Record the outputs and meter usage, exactly once per job whatever the duplicates."""
    job = _job_for_event(job_public_id)
    if job is None:
        return False
    return _finish(
        job=job,
        status=Job.Status.SUCCEEDED,
        attempt=attempt,
        fields={
            "output_keys": output_keys,
            "metrics": {**job.metrics, **metrics},
            "progress_step": job.input["steps"],
            "progress_total": job.input["steps"],
        },
        produced=len(output_keys),
    )


@transaction.atomic
def job_mark_preempted(*, job_public_id: str, attempt: int) -> bool:
    """The worker of `attempt` stopped before finishing; SQS redelivers the job as attempt + 1."""
    job = _job_for_event(job_public_id)
    if job is None:
        return False
    changed = Job.objects.filter(pk=job.pk, status__in=Job.IN_FLIGHT, attempt=attempt).update(
        status=Job.Status.STARTING, progress_step=0
    )
    if changed:
        _event(job, "preempted", attempt)
    return bool(changed)


@transaction.atomic
def job_mark_failed(*, job_public_id: str, attempt: int, code: str, message: str) -> bool:
    job = _job_for_event(job_public_id)
    if job is None:
        return False
    return _fail(job, code=code, message=message, attempt=attempt)


def jobs_fail_dead_lettered() -> int:
    """Fail the jobs whose message was dead-lettered (its worker died on every delivery).

    Credits are released; the message is deleted only after the job is final, so a crash here
    leaves it for the next sweep.
    """
    failed = 0
    lost = f"The worker was lost on each of {settings.SQS_MAX_RECEIVES} deliveries of this job."
    for model in DiffusionModel.objects.all():  # a model disabled since still has its lost jobs
        for letter in receive_dead_letters(model.slug):
            with transaction.atomic():
                message = letter.kwargs.get("job", {})
                job = _job_for_event(message.get("job_id", ""))
                # Fenced by the last attempt this message ran as: a job published again since
                # (by the reconciler, at a higher attempt) is not this message's to fail.
                last = int(message.get("attempt", 1)) + settings.SQS_MAX_RECEIVES - 1
                if job is not None and _fail(job, code="worker_lost", message=lost, attempt=last):
                    failed += 1
            delete_dead_letter(letter)
    return failed


# --- reconciler: admitted jobs whose message is gone ----------------------------------------------

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


def _queue_of(job: Job) -> str:
    """The queue an admitted job's message is on: its model's, or the control queue while its
    img2img image is still to be fetched."""
    if job.init_image_url and not job.init_image_key:
        return control_queue_name()
    return model_queue_name(job.model.slug)


def _holds_no_message(queue: str) -> bool:
    """Whether `queue` holds no message that could still be any admitted job's.

    A model queue: no message visible, in flight or delayed, and none in its dead-letter queue
    (the dead-letter sweep fails those jobs). The control queue always has messages in flight
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
    that many receives), and the row's attempt is at least the original's, so every event of a
    late original (received, started, progress, succeeded, failed, dead-lettered) is fenced out.
    After RECONCILE_MAX_REPUBLISHES it fails `message_lost` instead, credits released.

    Rows are taken under the tenant lock, then SKIP LOCKED, and checked again after the queues
    were read: an event that arrived meanwhile keeps its job, and two reconcilers never act on
    the same job (the `republished` event is itself a sign of life).
    """
    now = timezone.now()
    since = now - silent_for
    silent = selectors.jobs_silent_in_flight(since=since).select_related("model")
    empty: dict[str, bool] = {}
    lost: dict[int, list[int]] = {}
    for job in silent.order_by("id")[:500]:
        queue = _queue_of(job)
        if queue not in empty:
            try:
                empty[queue] = _holds_no_message(queue)
            except Exception as exc:  # SQS away: nothing can be told, the next run tries again
                logger.warning("reconciler: cannot read %s (%s)", queue, exc)
                empty[queue] = False
        if empty[queue]:
            lost.setdefault(job.tenant_id, []).append(job.pk)
    done = Reconciled(unseen=[], republished=[], failed=[])
    looked_before = now - dt.timedelta(seconds=RECONCILE_CONFIRM_S)
    silent_s = int(silent_for.total_seconds())
    reason = f"no message on its queue and no sign of life for over {silent_s} s"
    for tenant in Tenant.objects.filter(pk__in=lost).order_by("pk"):
        with transaction.atomic():
            _lock_tenant(tenant)
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
        _event(job, "unseen", job.attempt, reason=reason, **looks)
        done.unseen.append(job.public_id)
        return False
    if first.created_at > looked_before:
        return False  # too soon for the second look
    times = job.events.filter(kind="republished").count()
    if times >= settings.RECONCILE_MAX_REPUBLISHES:
        message = (
            f"The job's queue message was lost {times + 1} times (its queue was purged, deleted "
            "or recreated) and nothing would run it; its credits were released. Submit it again."
        )
        if _fail(job, code="message_lost", message=message, fence=Q(attempt=job.attempt)):
            done.failed.append(job.public_id)
        return False
    attempt = job.attempt + settings.SQS_MAX_RECEIVES
    changed = Job.objects.filter(pk=job.pk, status__in=Job.IN_FLIGHT, attempt=job.attempt).update(
        status=Job.Status.STARTING, attempt=attempt, published_at=None, progress_step=0
    )
    if not changed:
        return False
    _event(job, "republished", attempt, reason=reason, previous_attempt=job.attempt)
    logger.warning("job %s lost its message (%s): publishing it again", job.public_id, reason)
    done.republished.append(job.public_id)
    return True
