from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError
from django.contrib import admin, messages
from django.core.files.storage import default_storage
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timezone import localtime

from jobs.models import DiffusionModel, Job, LoraAdapter, Upload
from jobs.selectors import job_events, job_metrics, job_output_urls
from jobs.services.lifecycle import job_cancel
from sdsaas.errors import ServiceError

MISSING = "—"
# Shown in this order; the worker reports the middle four, the API's definitions give the rest.
METRICS = ("queue_s", "load_s", "inference_s", "encode_s", "upload_s", "total_s")
JOB_SUMMARY = (
    "public_id",
    "tenant",
    "model",
    "kind",
    "status",
    "attempt",
    "error_code",
    "error_message",
    "credits_reserved",
    "credit_month",
)
# Model fields placed in a named section of the job page; "Raw fields" gets all the others.
JOB_SHOWN = (*JOB_SUMMARY, "input", "init_image_key", "init_image_url", "output_keys")


@admin.register(DiffusionModel)
class DiffusionModelAdmin(admin.ModelAdmin):
    list_display = ["slug", "family", "revision", "enabled", "owner", "max_side", "max_steps"]
    # The owner is nullable, which the admin's own select_related() leaves out: a query per row.
    list_select_related = ["owner"]
    list_filter = ["family", "enabled"]
    search_fields = ["slug", "name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A model's slug names its queue and GPU service (deploy/terraform): renamed, its jobs
        # would go to a queue no worker reads.
        return ["slug"] if obj is not None else []


@admin.register(LoraAdapter)
class LoraAdapterAdmin(admin.ModelAdmin):
    list_display = ["slug", "family", "default_weight", "enabled", "owner"]
    list_select_related = ["owner"]
    list_filter = ["family", "enabled"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Jobs name their LoRAs by slug; a job whose LoRA is gone cannot be sent to a GPU.
        return ["slug"] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # retired by disabling it: jobs accepted with it still run


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ["public_id", "tenant", "content_type", "width", "height", "created_at"]
    readonly_fields = [f.name for f in Upload._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


def _thumbnail(url: str, alt: str) -> SafeString:
    # Lazy: a job can have many outputs, and each presigned URL is a full-size download.
    return format_html(
        '<a href="{}" target="_blank" rel="noopener noreferrer">'
        '<img src="{}" alt="{}" loading="lazy" class="job-thumbnail" '
        'style="max-width:256px;max-height:256px;margin:0 8px 8px 0;vertical-align:top"></a>',
        url,
        url,
        alt,
    )


def _no_links(exc: BotoCoreError) -> SafeString:
    # Signing is local, so this is missing credentials or bad storage settings: the rest of the
    # page is what staff need to look into it, so it must still render.
    return format_html("Cannot make image links: {}", exc)


def _seconds(value: Any) -> str:
    # A worker's metrics are JSON it sent: show what is not a number as missing, not a 500.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.2f}"
    return MISSING


def _detail(detail: Any) -> SafeString:
    if not isinstance(detail, dict):
        return format_html("{}", json.dumps(detail))
    # Sorted: PostgreSQL's jsonb does not keep the order the keys were written in.
    return format_html_join(
        ", ",
        "{}={}",
        (
            (key, value if isinstance(value, str) else json.dumps(value))
            for key, value in sorted(detail.items())
        ),
    )


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["public_id", "tenant", "model", "status", "attempt", "created_at"]
    list_filter = ["status", "model", "tenant", "kind"]
    search_fields = ["public_id"]
    actions = ["cancel"]
    fieldsets = [
        ("Summary", {"fields": JOB_SUMMARY}),
        ("Input", {"fields": ("input", "input_image", "init_image_key", "init_image_url")}),
        ("Output images", {"fields": ("output_images", "output_keys")}),
        ("Metrics", {"fields": ("metrics_table",)}),
        ("Timeline", {"fields": ("timeline",)}),
        # Every other model field, so that a field added to Job is never left off this page.
        (
            "Raw fields",
            {
                "classes": ["collapse"],
                "fields": [f.name for f in Job._meta.fields if f.name not in JOB_SHOWN],
            },
        ),
    ]
    readonly_fields = [
        *(f.name for f in Job._meta.fields),
        "input_image",
        "output_images",
        "metrics_table",
        "timeline",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        # A live job holds reserved credits and may be on a GPU: cancel it, which releases them.
        return obj is None or obj.is_final

    @admin.action(description="Cancel selected jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset.select_related("tenant"):
            try:
                job_cancel(tenant=job.tenant, job_public_id=job.public_id)
            except ServiceError as exc:
                self.message_user(request, f"{job.public_id}: {exc.message}", messages.WARNING)

    @admin.display(description="Input image")
    def input_image(self, job: Job) -> str:
        if job.init_image_key:
            try:
                url = default_storage.url(job.init_image_key)
            except BotoCoreError as exc:
                return _no_links(exc)
            return _thumbnail(url, job.init_image_key)
        if job.init_image_url:
            # Not an <img>: the staff browser would fetch a URL the tenant chose.
            return format_html("Fetched by the worker from {} (no preview).", job.init_image_url)
        return "None (txt2img)."

    @admin.display(description="Images")
    def output_images(self, job: Job) -> str:
        # The API's own URLs (presigned, expiring), so staff see exactly what the tenant got.
        try:
            urls = job_output_urls(job=job)
        except BotoCoreError as exc:
            return _no_links(exc)
        if not urls:
            return "No images."
        return format_html_join(
            "",
            "{}",
            ((_thumbnail(url, key),) for url, key in zip(urls, job.output_keys, strict=True)),
        )

    @admin.display(description="Seconds")
    def metrics_table(self, job: Job) -> str:
        # queue_s and total_s come from the timestamps as the API defines them; the rest from
        # the worker's report.
        values = {**job.metrics, **job_metrics(job=job)}
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td></tr>",
            ((name, _seconds(values.get(name))) for name in METRICS),
        )
        return format_html('<table class="job-metrics"><tbody>{}</tbody></table>', rows)

    @admin.display(description="Events")
    def timeline(self, job: Job) -> str:
        events = list(job_events(job=job))
        if not events:
            return "No events."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    localtime(event.created_at).isoformat(sep=" ", timespec="milliseconds"),
                    f"{(event.created_at - job.created_at).total_seconds():+.1f} s",
                    event.kind,
                    event.attempt,
                    _detail(event.detail),
                )
                for event in events
            ),
        )
        return format_html(
            '<table class="job-timeline"><thead><tr><th>Time</th><th>Since created</th>'
            "<th>Event</th><th>Attempt</th><th>Detail</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )
