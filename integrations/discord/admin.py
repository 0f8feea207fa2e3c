"""Operators' pages of Discord: applications (with their guild policies) and the replies that
follow jobs started from Discord. A bot token can be set on an application's page, never read:
it is a write-only field, encrypted by the service that saves it. Changes go through the
services, as the API's do."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from integrations.admin import ReadOnlyInline
from integrations.discord.client import DiscordError
from integrations.discord.models import DiscordApplication, DiscordReply, GuildPolicy
from integrations.discord.services.applications import (
    application_create,
    application_update,
    commands_register,
    upscale_model_check,
)
from integrations.discord.validators import (
    BOT_TOKEN_CHARS,
    BOT_TOKEN_MAX_CHARS,
    PUBLIC_KEY_HEX,
    SNOWFLAKE,
    ed25519_public_key,
)
from sdsaas.errors import InvalidInput

TOKEN_FIELDS = ("bot_token_encrypted",)
# Set when the application is added: the id is Discord's, the tenant the one it acts for.
FIXED_ONCE_ADDED = ("tenant", "application_id")
SHOWN_ONLY = ("commands_registered_at", "created_at", "updated_at")


class DiscordApplicationForm(forms.ModelForm):
    # Write-only: never rendered with a value, not even after a failed save.
    bot_token = forms.CharField(
        label="Bot token",
        required=False,
        strip=False,
        max_length=BOT_TOKEN_MAX_CHARS,
        validators=[BOT_TOKEN_CHARS],
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stored encrypted and never shown. On an existing application, leave it "
        "empty to keep the current token.",
    )

    class Meta:
        model = DiscordApplication
        fields = ["tenant", "application_id", "public_key", "upscale_model"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "application_id" in self.fields:
            self.fields["application_id"].validators.append(SNOWFLAKE)
        self.fields["public_key"].validators += [PUBLIC_KEY_HEX, ed25519_public_key]

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        adding = self.instance.pk is None
        if adding and not cleaned.get("bot_token"):
            self.add_error("bot_token", "A new application needs its bot token.")
        tenant = cleaned.get("tenant") if adding else self.instance.tenant
        slug = cleaned.get("upscale_model") or ""
        if tenant is not None and slug:
            try:
                upscale_model_check(tenant=tenant, slug=slug)
            except InvalidInput as exc:
                self.add_error("upscale_model", ValidationError(exc.details["upscale_model"]))
        return cleaned


class GuildPolicyInline(ReadOnlyInline):
    """Read-only: the tenant owns its policies (through the API)."""

    model = GuildPolicy
    fields = readonly_fields = ("guild_id", *GuildPolicy.RULES, "updated_at")
    ordering = ["-id"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[GuildPolicy]:
        # Each row is titled with str(policy), which names the application: not a query each.
        return super().get_queryset(request).select_related("application")


@admin.register(DiscordApplication)
class DiscordApplicationAdmin(admin.ModelAdmin):
    form = DiscordApplicationForm
    list_display = [
        "public_id",
        "tenant",
        "application_id",
        "upscale_model",
        "commands_registered_at",
        "created_at",
    ]
    list_select_related = ["tenant"]
    list_filter = ["tenant"]
    search_fields = ["public_id", "application_id"]
    actions = ["register_commands"]
    inlines = [GuildPolicyInline]
    exclude = TOKEN_FIELDS

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = ("tenant", "application_id", "public_key", "bot_token", "upscale_model")
        if obj is None:
            return fields
        return ("public_id", *fields, *SHOWN_ONLY)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        return ["public_id", *FIXED_ONCE_ADDED, *SHOWN_ONLY]

    def get_queryset(self, request: HttpRequest) -> QuerySet[DiscordApplication]:
        return super().get_queryset(request).select_related("tenant")

    def save_model(
        self, request: HttpRequest, obj: DiscordApplication, form: forms.ModelForm, change: bool
    ) -> None:
        # Through the services: the token is encrypted there, and one application id belongs
        # to one tenant (the form's unique check, and the service's for a concurrent add).
        token = form.cleaned_data.get("bot_token") or None
        if not change:
            assert token is not None, "the form requires a token to add"
            created = application_create(
                tenant=obj.tenant,
                application_id=obj.application_id,
                public_key=obj.public_key,
                bot_token=token,
                upscale_model=obj.upscale_model,
            )
            obj.pk = created.pk
            obj._state.adding = False
        else:
            changed = set(form.changed_data)
            application_update(
                tenant=obj.tenant,
                public_id=obj.public_id,
                public_key=obj.public_key if "public_key" in changed else None,
                bot_token=token,
                upscale_model=obj.upscale_model if "upscale_model" in changed else None,
            )
        obj.refresh_from_db()

    @admin.action(description="Register slash commands with Discord")
    def register_commands(
        self, request: HttpRequest, queryset: QuerySet[DiscordApplication]
    ) -> None:
        for application in queryset.select_related("tenant").order_by("id"):
            try:
                registered = commands_register(
                    tenant=application.tenant, public_id=application.public_id
                )
            except DiscordError as exc:
                # The client's messages name the route with any token redacted.
                self.message_user(
                    request, f"{application.public_id}: not registered: {exc}", messages.ERROR
                )
                continue
            self.message_user(
                request,
                f"{application.public_id}: {registered.commands} slash command(s) registered "
                "with Discord.",
            )


@admin.register(DiscordReply)
class DiscordReplyAdmin(admin.ModelAdmin):
    """Read-only: the replies are the sync's to write. The interaction token is never shown."""

    list_display = [
        "job",
        "application",
        "guild_id",
        "channel_id",
        "user_id",
        "done",
        "error",
        "created_at",
    ]
    list_select_related = ["job", "application"]
    list_filter = ["done"]
    search_fields = ["job__public_id", "interaction_id", "guild_id", "user_id"]
    exclude = ["token_encrypted"]
    readonly_fields = [f.name for f in DiscordReply._meta.fields if f.name != "token_encrypted"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[DiscordReply]:
        return super().get_queryset(request).select_related("job", "application")
