"""Submitting a job: resolve and check its input against model and plan, reserve credits,
create it (once per Idempotency-Key) and admit it.

Inserts its own job, then locks the tenant row before it touches credits and admits, as every
service that changes a tenant's jobs or credits does (`jobs.services.common.lock_tenant`).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from integrations.safe_http import address_is_public
from jobs import selectors
from jobs.models import (
    DiffusionModel,
    IdempotencyRecord,
    Job,
    JobEvent,
    LoraAdapter,
    public_id,
)
from jobs.services.common import lock_tenant
from jobs.services.dispatch import jobs_admit
from jobs.services.idempotency import idempotent_create, request_fingerprint
from sdsaas import telemetry
from sdsaas.contract import (
    DEFAULT_OUTPUT_FORMAT,
    DEFAULT_STRENGTH,
    SEED_MAX,
    GenerationInput,
    LoraChoice,
    OutputFormat,
    Scheduler,
)
from sdsaas.errors import InvalidInput
from tenants.models import Tenant, month_of
from tenants.services import credits_reserve, rate_limit_hit


@dataclass(frozen=True)
class ResolvedInput:
    model: DiffusionModel
    kind: str
    input: dict[str, Any]
    init_image_key: str
    init_image_url: str


def _resolve_loras(
    *, tenant: Tenant, model: DiffusionModel, requested: Iterable[dict[str, Any]]
) -> tuple[LoraChoice, ...]:
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
            LoraChoice(slug=lora.slug, weight=lora.default_weight if weight is None else weight)
        )
    return tuple(resolved)


def _previous_output(*, tenant: Tenant, job_id: str) -> str:
    """The first image of the tenant's succeeded job: img2img from an earlier result."""
    previous = Job.objects.filter(
        tenant=tenant, public_id=job_id, status=Job.Status.SUCCEEDED
    ).first()
    if previous is None or not previous.output_keys:
        raise InvalidInput("image", f"no succeeded job {job_id!r} with an image")
    return str(previous.output_keys[0])


# A DNS name: labels of letters, digits and inner hyphens, at most 63 characters each.
_HOST_NAME = re.compile(r"\A(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?\Z")


def _check_side(name: str, value: int, model: DiffusionModel) -> None:
    if not model.min_side <= value <= model.max_side:
        raise InvalidInput(
            name,
            f"must be between {model.min_side} and {model.max_side} for model {model.slug!r}",
        )


def _check_image_url_host(url: str) -> None:
    """Refuse a host that is no DNS name, and an address literal we would never fetch now; names
    are checked at fetch time."""
    host = (urlsplit(url).hostname or "").lower()
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        try:  # IPv4 as resolvers also read it: 127.1, 0x7f000001, 2130706433, 0177.0.0.1
            literal = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            if not _HOST_NAME.match(host):
                raise InvalidInput("image", f"{host!r} is not a host name") from None
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
    elif image.startswith("job_"):
        init_key = _previous_output(tenant=tenant, job_id=image)
    elif image:
        _check_image_url_host(image)
        init_url = image
    if data.get("strength") is not None and not image:
        raise InvalidInput("strength", "applies to img2img only: give an image")
    strength = None
    if image:
        strength = DEFAULT_STRENGTH if data.get("strength") is None else data["strength"]
        if int(steps * strength) < 1:  # img2img runs steps x strength steps
            raise InvalidInput(
                "strength", f"with {steps} steps it must be at least {1 / steps:.4g}"
            )
    resolved = GenerationInput(
        prompt=data["prompt"],
        negative_prompt=data.get("negative_prompt") or "",
        width=width,
        height=height,
        steps=steps,
        guidance=model.default_guidance if data.get("guidance") is None else data["guidance"],
        scheduler=Scheduler(data.get("scheduler") or model.default_scheduler),
        num_outputs=data.get("num_outputs") or 1,
        seed=secrets.randbelow(SEED_MAX + 1) if seed is None else seed,
        loras=_resolve_loras(tenant=tenant, model=model, requested=data.get("loras") or []),
        output_format=OutputFormat(data.get("output_format") or DEFAULT_OUTPUT_FORMAT),
        image=image or None,
        strength=strength,
    )
    return ResolvedInput(
        model=model,
        kind=Job.Kind.IMG2IMG if image else Job.Kind.TXT2IMG,
        input=resolved.to_wire(),
        init_image_key=init_key,
        init_image_url=init_url,
    )


def _webhook_url(*, tenant: Tenant, url: str) -> str:
    """A per-job webhook the notifier can send to, checked by the notifier itself
    (settings.JOB_WEBHOOK_VALIDATOR, named rather than imported: notifiers depend on jobs)."""
    if url:
        import_string(settings.JOB_WEBHOOK_VALIDATOR)(tenant=tenant, url=url)
    return url


def job_submit(
    *,
    tenant: Tenant,
    data: dict[str, Any],
    idempotency_key: str | None = None,
    origin: dict[str, str] | None = None,
) -> tuple[Job, bool]:
    """Create a job (credits reserved, admitted if the tenant has a free slot); (job, created).

    `origin` marks a job that did not come from the REST API (Job.origin). The job is published
    to its model's queue only after this transaction commits.
    """
    rate_limit_hit(tenant=tenant)

    def create() -> Job:
        # The job's trace begins here: its later work, in any process, joins it (trace_parent).
        with telemetry.span("job.submit", tenant_id=tenant.pk) as span:
            job = create_job()
            span.set_attribute("job_id", job.public_id)
        return job

    def create_job() -> Job:
        # Reads and the job's own row first; the tenant's lock, which serialises its submits and
        # admissions, is taken last, for the credits and the admission, and held to the commit.
        resolved = job_resolve_input(tenant=tenant, data=data)
        amount = resolved.input["num_outputs"]
        now = timezone.now()
        job = Job.objects.create(
            public_id=public_id("job"),
            tenant=tenant,
            model=resolved.model,
            kind=resolved.kind,
            input=resolved.input,
            init_image_key=resolved.init_image_key,
            init_image_url=resolved.init_image_url,
            webhook_url=_webhook_url(tenant=tenant, url=data.get("webhook") or ""),
            webhook_events=sorted(set(data.get("webhook_events_filter") or [])),
            credits_reserved=amount,
            credit_month=month_of(now),
            origin=origin or {},
            trace_parent=telemetry.traceparent(),
        )
        lock_tenant(tenant)
        credits_reserve(tenant=tenant, amount=amount, now=now)
        created = JobEvent(job=job, kind="created", attempt=0)
        if job.pk in jobs_admit(tenant=tenant, events=[created], now=now):
            # What admission changed, without reading the row again.
            job.status, job.attempt, job.admitted_at = Job.Status.STARTING, 1, now
        return job

    return idempotent_create(
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
