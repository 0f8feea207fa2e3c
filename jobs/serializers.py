"""Input validation (static bounds) and the public job/model objects of API v1."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.files.storage import default_storage
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.models import MAX_STEPS_CEILING, SCHEDULERS, DiffusionModel, Job, LoraAdapter, Upload
from jobs.selectors import job_queue_position

MAX_PROMPT_CHARS = 2000
MAX_LORAS = 5
OUTPUT_FORMATS = ("png", "webp", "jpeg")


class StrictSerializer(serializers.Serializer):
    """Rejects unknown fields: a typo (`step` for `steps`) is a 400, not a silent default."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class NumberField(serializers.FloatField):
    """A JSON number: unlike DRF's FloatField, `true` is refused, not read as 1.0."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool):
            self.fail("invalid")
        return float(super().to_internal_value(data))


def multiple_of_8(value: int) -> None:
    if value % 8:
        raise serializers.ValidationError("Must be a multiple of 8.")


class LoraInputSerializer(StrictSerializer):
    slug = serializers.SlugField(max_length=40)
    weight = NumberField(min_value=-2.0, max_value=2.0, required=False)


class JobInputSerializer(StrictSerializer):
    model = serializers.SlugField(max_length=40)
    prompt = serializers.CharField(max_length=MAX_PROMPT_CHARS, trim_whitespace=False)
    negative_prompt = serializers.CharField(
        max_length=MAX_PROMPT_CHARS, required=False, allow_blank=True, trim_whitespace=False
    )
    width = serializers.IntegerField(
        min_value=8, max_value=8192, required=False, validators=[multiple_of_8]
    )
    height = serializers.IntegerField(
        min_value=8, max_value=8192, required=False, validators=[multiple_of_8]
    )
    steps = serializers.IntegerField(min_value=1, max_value=MAX_STEPS_CEILING, required=False)
    guidance = NumberField(min_value=0.0, max_value=30.0, required=False)
    scheduler = serializers.ChoiceField(choices=SCHEDULERS, required=False)
    num_outputs = serializers.IntegerField(min_value=1, max_value=4, required=False)
    seed = serializers.IntegerField(min_value=0, max_value=2**32 - 1, required=False)
    image = serializers.CharField(
        max_length=2048,
        required=False,
        help_text="img2img: an upload id (`upl_…`) or an https URL.",
    )
    strength = NumberField(min_value=0.0, max_value=1.0, required=False)
    loras = LoraInputSerializer(many=True, required=False)
    output_format = serializers.ChoiceField(choices=OUTPUT_FORMATS, required=False)

    def validate_loras(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) > MAX_LORAS:
            raise serializers.ValidationError(f"At most {MAX_LORAS} LoRAs.")
        return value

    def validate_image(self, value: str) -> str:
        if value.startswith("upl_"):
            return value
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise serializers.ValidationError("Must be an upload id (upl_…) or an https URL.")
        return value


class JobFilterSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=Job.Status.values, required=False)
    model = serializers.SlugField(max_length=40, required=False)
    cursor = serializers.CharField(required=False)
    limit = serializers.IntegerField(min_value=1, max_value=100, required=False)


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


def _seconds(start: Any, end: Any) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def job_output_urls(job: Job) -> list[str] | None:
    """Presigned URLs of the job's images (they expire after SDSAAS_OUTPUT_URL_TTL)."""
    if not job.output_keys:
        return None
    return [default_storage.url(key) for key in job.output_keys]


def job_metrics(job: Job) -> dict[str, float | None]:
    """The public metrics, in seconds: queue and total from the job's timestamps."""
    return {
        "queue_s": _seconds(job.created_at, job.started_at),
        "load_s": job.metrics.get("load_s"),
        "inference_s": job.metrics.get("inference_s"),
        "total_s": _seconds(job.created_at, job.completed_at),
    }


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
        ]

    @extend_schema_field(serializers.ListField(child=serializers.URLField(), allow_null=True))
    def get_output(self, job: Job) -> list[str] | None:
        return job_output_urls(job)

    @extend_schema_field(JobErrorSerializer(allow_null=True))
    def get_error(self, job: Job) -> dict[str, str] | None:
        if not job.error_code:
            return None
        return {"code": job.error_code, "message": job.error_message}

    @extend_schema_field(JobProgressSerializer)
    def get_progress(self, job: Job) -> dict[str, int]:
        total = job.progress_total or int(job.input.get("steps", 0))
        return {"step": job.progress_step, "total": total}

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_queue_position(self, job: Job) -> int | None:
        return job_queue_position(job=job)

    @extend_schema_field(JobMetricsSerializer)
    def get_metrics(self, job: Job) -> dict[str, float | None]:
        return job_metrics(job)

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
            "schedulers": list(SCHEDULERS),
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
