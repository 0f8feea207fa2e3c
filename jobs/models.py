from __future__ import annotations

import secrets

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from sdsaas.contract import DEFAULT_SCHEDULER, MAX_STEPS_CEILING, JobKind, Scheduler
from tenants.models import Tenant


def public_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class Family(models.TextChoices):
    SD15 = "sd15", "Stable Diffusion 1.5"
    SD21 = "sd21", "Stable Diffusion 2.1"
    SDXL = "sdxl", "Stable Diffusion XL"


class DiffusionModel(models.Model):
    """A base model in the catalog. Each one has its own SQS queue and GPU pool."""

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=128)
    family = models.CharField(max_length=8, choices=Family.choices)
    source_uri = models.CharField(
        max_length=512, help_text="s3://bucket/prefix/ or an absolute path in diffusers layout."
    )
    revision = models.CharField(max_length=64, help_text="Version label recorded with each image.")
    sha256 = models.CharField(
        max_length=64, blank=True, help_text="Hash of the weights, verified by GPU workers."
    )
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="private_models",
        help_text="Empty: public to all tenants. Set: private to this tenant.",
    )
    default_width = models.PositiveIntegerField(default=512)
    default_height = models.PositiveIntegerField(default=512)
    default_steps = models.PositiveIntegerField(default=30)
    default_guidance = models.FloatField(default=7.5)
    default_scheduler = models.CharField(
        max_length=32,
        choices=[(s.value, s.value) for s in Scheduler],
        default=DEFAULT_SCHEDULER.value,
    )
    min_side = models.PositiveIntegerField(default=256)
    max_side = models.PositiveIntegerField(default=1024)
    max_steps = models.PositiveIntegerField(
        default=MAX_STEPS_CEILING,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_STEPS_CEILING)],
    )
    # A job's wall-clock limit on a GPU worker, from receive to upload (see job_time_limit_s):
    # past it the job fails as `timeout` and the worker takes the next one.
    time_limit_base_s = models.FloatField(
        default=120.0,
        validators=[MinValueValidator(0)],
        help_text="Seconds a job may take besides denoising: loading the model, encoding, upload.",
    )
    time_limit_step_s = models.FloatField(
        default=2.0,
        validators=[MinValueValidator(0)],
        help_text="Seconds one denoising step of one 512x512 image may take, generously; "
        "scaled by the job's steps, size and number of images.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(max_steps__gte=1, max_steps__lte=MAX_STEPS_CEILING),
                name="model_max_steps_range",
            ),
            models.CheckConstraint(condition=Q(min_side__lte=models.F("max_side")), name="sides"),
        ]

    def __str__(self) -> str:
        return self.slug


class LoraAdapter(models.Model):
    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=128)
    family = models.CharField(max_length=8, choices=Family.choices)
    source_uri = models.CharField(max_length=512)
    sha256 = models.CharField(max_length=64, blank=True)
    default_weight = models.FloatField(
        default=1.0, validators=[MinValueValidator(-2), MaxValueValidator(2)]
    )
    enabled = models.BooleanField(default=True)
    owner = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="private_loras"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.slug


class Upload(models.Model):
    """An input image for img2img, stored in S3 under the tenant."""

    public_id = models.CharField(max_length=32, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="uploads")
    storage_key = models.CharField(max_length=512)
    content_type = models.CharField(max_length=32)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.public_id


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"  # waiting in Postgres for admission
        STARTING = "starting"  # admitted: in the model's queue, or loading on a worker
        PROCESSING = "processing"  # denoising
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"

    class Kind(models.TextChoices):  # the contract's JobKind
        TXT2IMG = JobKind.TXT2IMG.value
        IMG2IMG = JobKind.IMG2IMG.value

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)
    IN_FLIGHT = (Status.STARTING, Status.PROCESSING)

    public_id = models.CharField(max_length=32, unique=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="jobs")
    model = models.ForeignKey(DiffusionModel, on_delete=models.PROTECT, related_name="jobs")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    input = models.JSONField(help_text="Resolved input: defaults applied, seed always set.")
    init_image_key = models.CharField(max_length=512, blank=True)
    init_image_url = models.URLField(max_length=2048, blank=True)
    # A per-job webhook (integrations/webhooks/): its URL, and the event types it wants (empty:
    # every type), signed with the tenant's per-job webhook secret.
    webhook_url = models.URLField(max_length=2048, blank=True)
    webhook_events = models.JSONField(default=list, blank=True)
    # Where the job came from, when not the REST API: {"type": "discord", "guild_id",
    # "channel_id", "user_id"} for a Discord interaction.
    origin = models.JSONField(default=dict, blank=True)
    attempt = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    output_keys = models.JSONField(default=list)
    metrics = models.JSONField(default=dict)
    credits_reserved = models.PositiveIntegerField(default=0)
    credit_month = models.DateField()
    # The W3C traceparent of the request that submitted the job: its later work joins that trace.
    trace_parent = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    admitted_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "status", "id"]),
            models.Index(fields=["status", "published_at"]),
            # A model's recent run times (the scaling publisher's seconds per job).
            models.Index(fields=["model", "status", "completed_at"]),
            # Recent failures and stage times (jobs/metrics.py).
            models.Index(fields=["status", "completed_at"]),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL


class JobEvent(models.Model):
    """The job's history: every transition and note, in order (shown in the admin timeline)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    attempt = models.PositiveIntegerField(default=0)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.job_id} {self.kind}"


class IdempotencyRecord(models.Model):
    """`Idempotency-Key` of a create request: same key + same body → the same object, for 24 h."""

    class Scope(models.TextChoices):
        JOB_CREATE = "job_create"
        UPLOAD_CREATE = "upload_create"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    scope = models.CharField(max_length=16, choices=Scope.choices)
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.CASCADE)
    upload = models.ForeignKey(Upload, null=True, blank=True, on_delete=models.CASCADE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "scope", "key"], name="uniq_idempotency")
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}"


class WorkerPool(models.Model):
    """The size the scaling policy chose for a model's GPU pool, until when it holds it and until
    when it keeps a warm worker (jobs/scaling.py `PoolState`, kept between the publisher's runs:
    jobs/services/scaling.py)."""

    model = models.OneToOneField(DiffusionModel, on_delete=models.CASCADE, related_name="pool")
    workers = models.PositiveIntegerField(default=0)
    hold_until = models.DateTimeField(null=True, blank=True)
    warm_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.model_id}: {self.workers}"
