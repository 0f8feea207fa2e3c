from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants.models import ApiKey, CreditPeriod, Plan, Tenant, UsageRecord
from tenants.services import api_key_issue, api_key_revoke


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "monthly_credits",
        "max_concurrent_jobs",
        "requests_per_minute",
        "max_pixels",
        "max_steps",
    ]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "prefix",
        "name",
        "scopes",
        "created_at",
        "last_used_at",
        "revoked_at",
    )

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "plan", "created_at"]
    list_filter = ["status", "plan"]
    search_fields = ["name"]
    inlines = [ApiKeyInline]
    actions = ["issue_key"]

    @admin.action(description="Issue an API key (shown once)")
    def issue_key(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            _, plaintext = api_key_issue(tenant=tenant, name="issued in admin")
            # Shown once, in this message only; only the hash is stored.
            self.message_user(
                request, f"New key for {tenant.name}: {plaintext}", level=messages.WARNING
            )


class ApiKeyForm(forms.ModelForm):
    # Checkboxes of the known scopes: a free-form JSON list would accept scopes that do not exist.
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple, required=False
    )

    class Meta:
        model = ApiKey
        fields = ["name", "scopes"]

    def clean_scopes(self) -> list[str]:
        return sorted(self.cleaned_data["scopes"])


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["prefix", "tenant", "name", "scopes", "last_used_at", "revoked_at"]
    list_filter = ["tenant"]
    readonly_fields = ["tenant", "prefix", "key_hash", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are issued from the tenant page, so the plaintext is shown once

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_key_revoke(key=key)


@admin.register(CreditPeriod)
class CreditPeriodAdmin(admin.ModelAdmin):
    list_display = ["tenant", "month", "used", "reserved"]
    list_filter = ["month"]
    readonly_fields = ["tenant", "month", "used", "reserved"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # periods are opened by the first reservation of a month, in services

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # the month's ledger: its reservations of jobs in flight would be lost


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["tenant", "job", "image_index", "model_slug", "month", "created_at"]
    list_filter = ["month", "model_slug"]
    readonly_fields = ["tenant", "job", "image_index", "month", "model_slug", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # what a tenant was billed for
