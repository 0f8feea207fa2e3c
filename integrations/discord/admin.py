"""Operators' pages of Discord: applications (with their guild policies) and the replies that
follow jobs started from Discord. A bot token can be set on an application's page, never read:
it is a write-only field, encrypted by the service that saves it. Changes go through the
services, as the API's do, and guild policies are checked by the API's own rules."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from integrations.discord.client import DiscordError
from integrations.discord.models import DiscordApplication, DiscordReply, GuildPolicy
from integrations.discord.serializers import DiscordGuildPolicyPutSerializer
from integrations.discord.services.applications import (
    application_create,
    application_update,
    commands_register,
    guild_policy_delete,
    guild_policy_put,
    models_check,
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


class ListTextField(forms.Field):
    """A list of slugs or ids, written separated by commas (spaces and new lines also separate:
    neither can be part of one)."""

    widget = forms.TextInput

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list):
            return value
        return [item for item in re.split(r"[\s,]+", value or "") if item]

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, list) else value


def _api_messages(value: Any, errors: Any) -> list[str]:
    """The API's messages about one field; a list's are by item, and name the item."""
    if isinstance(errors, dict):
        return [
            f"{value[index]!r}: {message}" for index, item in errors.items() for message in item
        ]
    return [str(message) for message in errors]


class GuildPolicyForm(forms.ModelForm):
    """One guild's policy, checked as the API's PUT checks it: its serializer's rules, then the
    catalog of the application's tenant."""

    allowed_models = ListTextField(
        required=False,
        help_text="Slugs of models in the tenant's catalog, separated by commas; empty: all.",
    )
    allowed_channels = ListTextField(
        required=False,
        help_text="Channel ids, separated by commas; empty: every channel.",
    )

    class Meta:
        model = GuildPolicy
        fields = ["guild_id", *GuildPolicy.RULES]
        widgets = {"default_negative_prompt": forms.Textarea(attrs={"rows": 2, "cols": 40})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        guild = self.fields["guild_id"]
        guild.validators.append(SNOWFLAKE)
        if self.instance.pk is not None:
            # As in the API, where the guild is the policy's address: to move a policy, delete
            # it and add one for the other guild.
            guild.disabled = True

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if not self.has_changed():
            return cleaned  # not saved: a row can stay as it is even if rules changed since
        rules = {name: cleaned[name] for name in GuildPolicy.RULES if name in cleaned}
        payload = DiscordGuildPolicyPutSerializer(data=rules)
        if not payload.is_valid():
            for name, errors in payload.errors.items():
                for message in _api_messages(rules.get(name), errors):
                    self.add_error(name, message)
            return cleaned
        application: DiscordApplication | None = cleaned.get("application")
        # On the add page without a valid tenant the application is refused anyway.
        if application is not None and application.tenant_id is not None:
            try:
                models_check(tenant=application.tenant, slugs=rules.get("allowed_models", []))
            except InvalidInput as exc:
                for texts in exc.details.values():
                    for message in texts:
                        self.add_error("allowed_models", message)
        return cleaned

    def validate_unique(self) -> None:
        super().validate_unique()
        # Django leaves the inline's foreign key out of the one-policy-per-guild check, which
        # then checks nothing here (only between the rows posted): a row added for a guild that
        # has a policy would replace it, the service's PUT being create-or-replace.
        if self.instance.application_id is None or self.has_error("guild_id"):
            return  # a new application has no policies yet
        try:
            self.instance.validate_constraints()
        except ValidationError as exc:
            self.add_error(None, exc)


class GuildPolicyFormSet(forms.BaseInlineFormSet):
    """Saves and deletes through the services, as the API's PUT and DELETE do."""

    instance: DiscordApplication

    def save_new(self, form: forms.ModelForm, commit: bool = True) -> GuildPolicy:
        if not commit:
            return super().save_new(form, commit=False)
        return self._put(form)

    def save_existing(
        self, form: forms.ModelForm, obj: GuildPolicy, commit: bool = True
    ) -> GuildPolicy:
        if not commit:
            return super().save_existing(form, obj, commit=False)
        return self._put(form)

    def delete_existing(self, obj: GuildPolicy, commit: bool = True) -> None:
        if commit:
            guild_policy_delete(
                tenant=self.instance.tenant,
                public_id=self.instance.public_id,
                guild_id=obj.guild_id,
            )

    def _put(self, form: forms.ModelForm) -> GuildPolicy:
        # The form holds every rule: a PUT, which replaces the policy whole.
        policy, _ = guild_policy_put(
            tenant=self.instance.tenant,
            public_id=self.instance.public_id,
            guild_id=form.cleaned_data["guild_id"],
            **{name: form.cleaned_data[name] for name in GuildPolicy.RULES},
        )
        return policy


class GuildPolicyInline(admin.TabularInline):
    """The application's guild policies: added, changed and deleted here as through the API."""

    model = GuildPolicy
    form = GuildPolicyForm
    formset = GuildPolicyFormSet
    fields = ("guild_id", *GuildPolicy.RULES, "updated_at")
    readonly_fields = ("updated_at",)
    ordering = ["-id"]
    extra = 0

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
