"""Input validation (static bounds) and the public job/model objects of API v1."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.announcements import JobEventType
from jobs.models import DiffusionModel, Job, LoraAdapter, Upload
from jobs.selectors import (
    QUEUE_POSITION_CAP,
    job_metrics,
    job_output_urls,
    job_queue_position,
)
from sdsaas.api import (
    URL_CHARS,
    NumberField,
    QuerySerializer,
    StrictCharField,
    StrictChoiceField,
    StrictIntegerField,
    StrictSerializer,
    StrictSlugField,
)
from sdsaas.contract import MAX_STEPS_CEILING, SEED_MAX, OutputFormat, Scheduler

MAX_PROMPT_CHARS = 2000
MAX_LORAS = 5
SIDE_MIN, SIDE_MAX = 8, 8192


def multiple_of_8(value: int) -> None:
    if value % 8:
        raise serializers.ValidationError("Must be a multiple of 8.")


# Written out for the schema, which cannot read multiple_of_8; the model's and the plan's bounds
# are checked at submit.
@extend_schema_field({"type": "integer", "minimum": SIDE_MIN, "maximum": SIDE_MAX, "multipleOf": 8})
class ImageSideField(StrictIntegerField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            min_value=SIDE_MIN, max_value=SIDE_MAX, validators=[multiple_of_8], **kwargs
        )


class ImageRefValidator(RegexValidator):
    """An upload id, a succeeded job's id (its first image), or an https URL: a host name or
    address literal, then printable ASCII.

    No user info: credentials would go to whatever the name resolves to at fetch time. Address
    literals are checked at submit (services), names when the image is fetched. The pattern is
    the schema's (drf-spectacular publishes a RegexValidator's pattern).
    """

    regex = (
        r"\A((upl|job)_[0-9a-f]{20}|https://([-a-zA-Z0-9.]+|\[[0-9a-fA-F:.]+\])(:[0-9]{1,5})?"
        r"([/?#][!-~]*)?)\Z"
    )
    message = "Must be an upload id (upl_…), a job id (job_…) or an https URL."
    _user_info = re.compile(r"\A[a-zA-Z][-+.a-zA-Z0-9]*://[^/?#]*@")

    def __call__(self, value: Any) -> None:
        url = str(value)
        if self._user_info.match(url):
            raise serializers.ValidationError("Must not carry a user name or password.")
        super().__call__(url)
        if url.startswith("https:"):
            try:
                port = urlsplit(url).port
            except ValueError:  # a bracketed literal that is no address, a port over 65535
                port = 0
            if port == 0:
                raise serializers.ValidationError("Must have a valid address and port.")


class LoraInputSerializer(StrictSerializer):
    slug = StrictSlugField(max_length=40)
    weight = NumberField(min_value=-2.0, max_value=2.0, required=False)


class JobInputSerializer(StrictSerializer):
    model = StrictSlugField(max_length=40)
    prompt = StrictCharField(max_length=MAX_PROMPT_CHARS)
    negative_prompt = StrictCharField(max_length=MAX_PROMPT_CHARS, required=False, allow_blank=True)
    width = ImageSideField(required=False)
    height = ImageSideField(required=False)
    steps = StrictIntegerField(min_value=1, max_value=MAX_STEPS_CEILING, required=False)
    guidance = NumberField(min_value=0.0, max_value=30.0, required=False)
    scheduler = StrictChoiceField(choices=[s.value for s in Scheduler], required=False)
    num_outputs = StrictIntegerField(min_value=1, max_value=4, required=False)
    seed = StrictIntegerField(min_value=0, max_value=SEED_MAX, required=False)
    image = StrictCharField(
        max_length=2048,
        required=False,
        validators=[ImageRefValidator()],
        help_text="img2img: an upload id (`upl_` and 20 hex digits), a succeeded job's id (its "
        "first image) or an https URL without user info; a private, loopback or link-local "
        "address is refused.",
    )
    strength = NumberField(min_value=0.0, max_value=1.0, required=False)
    loras = serializers.ListField(child=LoraInputSerializer(), max_length=MAX_LORAS, required=False)
    output_format = StrictChoiceField(choices=[f.value for f in OutputFormat], required=False)
    webhook = StrictCharField(
        max_length=2048,
        required=False,
        validators=[URL_CHARS],
        help_text="A URL that receives this job's events, signed with the per-job webhook secret "
        "(POST /v1/webhooks/job-secret): https, never a private address.",
    )
    webhook_events_filter = serializers.ListField(
        child=StrictChoiceField(choices=[t.value for t in JobEventType]),
        required=False,
        max_length=len(JobEventType),
        help_text="The event types the `webhook` receives; all when absent.",
    )


class JobFilterSerializer(QuerySerializer):
    # Query values are always strings: the strict fields check their content, not their type.
    status = StrictChoiceField(choices=Job.Status.values, required=False)
    model = StrictSlugField(max_length=40, required=False)
    cursor = StrictCharField(
        required=False, help_text="From a page's `next` or `previous` link; nothing else."
    )
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)


class JobErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class JobProgressSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    total = serializers.IntegerField()


class JobMetricsSerializer(serializers.Serializer):
    queue_s = serializers.FloatField(allow_null=True)
    load_s = serializers.FloatField(allow_null=True)
    inference_s = serializers.FloatField(allow_null=True)
    total_s = serializers.FloatField(allow_null=True)


class JobUrlsSerializer(serializers.Serializer):
    get = serializers.URLField()
    cancel = serializers.URLField()


class JobOriginSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["api", "discord"])
    guild_id = serializers.CharField(required=False, help_text="Discord: the server, if any.")
    channel_id = serializers.CharField(required=False)
    user_id = serializers.CharField(required=False, help_text="Discord: who asked.")


_TIMESTAMP = serializers.DateTimeField()


def _timestamp(value: dt.datetime | None) -> str | None:
    """A time as every DRF DateTimeField of the API writes it (ISO 8601, UTC as `Z`)."""
    return None if value is None else _TIMESTAMP.to_representation(value)


def _model_slug(job: Job) -> str:
    """The job's model's slug: read with the job by `selectors.job_get`, else from the model."""
    slug = job.__dict__.get("model_slug")
    return str(slug) if slug is not None else job.model.slug


class JobSerializer(serializers.ModelSerializer):
    """The public job object (DESIGN.md section 4)."""

    id = serializers.CharField(source="public_id")
    model = serializers.CharField(source="model.slug")
    output = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField()
    metrics = serializers.SerializerMethodField()
    urls = serializers.SerializerMethodField()
    origin = serializers.SerializerMethodField()
    webhook = serializers.SerializerMethodField()
    webhook_events_filter = serializers.ListField(
        source="webhook_events", child=serializers.CharField(), read_only=True
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "status",
            "model",
            "kind",
            "input",
            "output",
            "error",
            "progress",
            "queue_position",
            "attempt",
            "created_at",
            "started_at",
            "completed_at",
            "metrics",
            "urls",
            "origin",
            "webhook",
            "webhook_events_filter",
        ]

    def to_representation(self, instance: Job) -> dict[str, Any]:
        """The job object, built at once rather than field by field: it answers every poll, and
        DRF's per-field path (copying and binding ~20 fields, then each field's own conversion)
        cost more than the rest of the response. The fields declared above are still what the
        schema describes; tests/jobs/test_job_object.py holds this to DRF's own output."""
        job = instance
        return {
            "id": job.public_id,
            "status": str(job.status),
            "model": _model_slug(job),
            "kind": str(job.kind),
            "input": job.input,
            "output": self.get_output(job),
            "error": self.get_error(job),
            "progress": self.get_progress(job),
            "queue_position": self.get_queue_position(job),
            "attempt": job.attempt,
            "created_at": _timestamp(job.created_at),
            "started_at": _timestamp(job.started_at),
            "completed_at": _timestamp(job.completed_at),
            "metrics": self.get_metrics(job),
            "urls": self.get_urls(job),
            "origin": self.get_origin(job),
            "webhook": self.get_webhook(job),
            "webhook_events_filter": [str(event) for event in job.webhook_events],
        }

    @extend_schema_field(serializers.ListField(child=serializers.URLField(), allow_null=True))
    def get_output(self, job: Job) -> list[str] | None:
        return job_output_urls(job=job)

    @extend_schema_field(JobOriginSerializer)
    def get_origin(self, job: Job) -> dict[str, str]:
        return job.origin or {"type": "api"}

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_webhook(self, job: Job) -> str | None:
        return job.webhook_url or None

    @extend_schema_field(JobErrorSerializer(allow_null=True))
    def get_error(self, job: Job) -> dict[str, str] | None:
        if not job.error_code:
            return None
        return {"code": job.error_code, "message": job.error_message}

    @extend_schema_field(JobProgressSerializer)
    def get_progress(self, job: Job) -> dict[str, int]:
        total = job.progress_total or int(job.input.get("steps", 0))
        return {"step": job.progress_step, "total": total}

    @extend_schema_field(
        serializers.IntegerField(
            allow_null=True,
            help_text="How many of your jobs wait for admission ahead of this one, counted up "
            f"to {QUEUE_POSITION_CAP}; null once admitted.",
        )
    )
    def get_queue_position(self, job: Job) -> int | None:
        # A list passes `context={"queue_positions": ...}`, its page's positions read in one query
        # (selectors.job_queue_positions), rather than one query per queued job.
        positions: dict[int, int] | None = self.context.get("queue_positions")
        if positions is None:
            return job_queue_position(job=job)
        return positions.get(job.id)

    @extend_schema_field(JobMetricsSerializer)
    def get_metrics(self, job: Job) -> dict[str, float | None]:
        return job_metrics(job=job)

    @extend_schema_field(JobUrlsSerializer)
    def get_urls(self, job: Job) -> dict[str, str]:
        base = f"{settings.PUBLIC_BASE_URL}/v1/jobs/{job.public_id}"
        return {"get": base, "cancel": f"{base}/cancel"}


class ModelSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="slug")
    visibility = serializers.SerializerMethodField()
    defaults = serializers.SerializerMethodField()
    bounds = serializers.SerializerMethodField()

    class Meta:
        model = DiffusionModel
        fields = ["id", "name", "family", "revision", "visibility", "defaults", "bounds"]

    def get_visibility(self, model: DiffusionModel) -> str:
        return "public" if model.owner_id is None else "private"

    @extend_schema_field(serializers.DictField())
    def get_defaults(self, model: DiffusionModel) -> dict[str, Any]:
        return {
            "width": model.default_width,
            "height": model.default_height,
            "steps": model.default_steps,
            "guidance": model.default_guidance,
            "scheduler": model.default_scheduler,
        }

    @extend_schema_field(serializers.DictField())
    def get_bounds(self, model: DiffusionModel) -> dict[str, Any]:
        return {
            "min_side": model.min_side,
            "max_side": model.max_side,
            "max_steps": model.max_steps,
            "schedulers": [s.value for s in Scheduler],
        }


class LoraSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="slug")

    class Meta:
        model = LoraAdapter
        fields = ["id", "name", "family", "default_weight"]


class UploadInputSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=False)


class UploadSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")

    class Meta:
        model = Upload
        fields = ["id", "content_type", "width", "height", "size_bytes", "sha256", "created_at"]
