from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from jobs.models import DiffusionModel, Job, JobEvent, LoraAdapter, Upload
from jobs.services import job_cancel
from sdsaas.errors import ServiceError


@admin.register(DiffusionModel)
class DiffusionModelAdmin(admin.ModelAdmin):
    list_display = ["slug", "family", "revision", "enabled", "owner", "max_side", "max_steps"]
    list_filter = ["family", "enabled"]
    search_fields = ["slug", "name"]


@admin.register(LoraAdapter)
class LoraAdapterAdmin(admin.ModelAdmin):
    list_display = ["slug", "family", "default_weight", "enabled", "owner"]
    list_filter = ["family", "enabled"]


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ["public_id", "tenant", "content_type", "width", "height", "created_at"]
    readonly_fields = [f.name for f in Upload._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    fields = readonly_fields = ("created_at", "kind", "attempt", "detail")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["public_id", "tenant", "model", "status", "attempt", "created_at"]
    list_filter = ["status", "model", "tenant", "kind"]
    search_fields = ["public_id"]
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobEventInline]
    actions = ["cancel"]

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
