"""Input validation and the public objects of the Discord API (`/v1/discord/…`): applications and
their guild policies.

These check types, formats and static bounds, and say in the schema what a field takes; the
services check what needs the world (the catalog, the applications already registered). A bot
token goes in and never comes out.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from integrations.discord.models import DiscordApplication, GuildPolicy
from integrations.discord.validators import (
    BOT_TOKEN_CHARS,
    BOT_TOKEN_MAX_CHARS,
    PUBLIC_KEY_HEX,
    SNOWFLAKE,
    ed25519_public_key,
)
from sdsaas.api import (
    SLUG,
    QuerySerializer,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
)
from sdsaas.contract import MAX_STEPS_CEILING

SLUG_MAX_CHARS = 40  # DiffusionModel.slug, DiscordApplication.upscale_model
MAX_LIST_ITEMS = 100
NEGATIVE_PROMPT_MAX_CHARS = 2000
SIDE_MIN, SIDE_MAX = 64, 2048
DAILY_IMAGES_MAX = 1_000_000

_SLUG = RegexValidator(SLUG.regex, "Must be a model's slug: letters, digits, '-' and '_'.")


def interactions_url(application: DiscordApplication) -> str:
    """Where Discord sends the application's interactions (its "Interactions Endpoint URL")."""
    return f"{settings.PUBLIC_BASE_URL}/v1/discord/interactions/{application.public_id}"


def _application_id_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(
        max_length=20,
        validators=[SNOWFLAKE],
        help_text='The Discord application\'s id (its "Application ID", 17 to 20 digits).',
        **kwargs,
    )


def _public_key_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(
        min_length=64,
        max_length=64,
        validators=[PUBLIC_KEY_HEX, ed25519_public_key],
        help_text='The application\'s "Public Key" (Ed25519, 64 hexadecimal characters): '
        "interactions not signed with it are refused.",
        **kwargs,
    )


def _bot_token_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(
        max_length=BOT_TOKEN_MAX_CHARS,
        validators=[BOT_TOKEN_CHARS],
        write_only=True,
        help_text="The bot's token: stored encrypted, used to register the slash commands and "
        "to post results, and never shown again.",
        **kwargs,
    )


def _upscale_model_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(
        max_length=SLUG_MAX_CHARS,
        # "" (no upscaling) skips the validators, and the schema says it as a choice of its own.
        allow_blank=True,
        validators=[_SLUG],
        help_text="A model of your catalog that upscales (img2img at twice the size): results "
        "get an Upscale button. Empty: no button.",
        **kwargs,
    )


class DiscordApplicationCreateSerializer(StrictSerializer):
    """A Discord application to act for the tenant; unknown fields are refused."""

    application_id = _application_id_field()
    public_key = _public_key_field()
    bot_token = _bot_token_field()
    upscale_model = _upscale_model_field(required=False)


class DiscordApplicationUpdateSerializer(StrictSerializer):
    """PATCH: the fields given change, the others stay; unknown fields are refused."""

    public_key = _public_key_field(required=False)
    bot_token = _bot_token_field(required=False)
    upscale_model = _upscale_model_field(required=False)


def multiple_of_8(value: int) -> None:
    if value % 8:
        raise serializers.ValidationError("Must be a multiple of 8.")


# Written out for the schema, which cannot read multiple_of_8.
@extend_schema_field(
    {
        "type": "integer",
        "minimum": SIDE_MIN,
        "maximum": SIDE_MAX,
        "multipleOf": 8,
        "nullable": True,
        "description": "The largest width or height a request may ask for, in pixels; null: no "
        "limit of the guild's own.",
    }
)
class MaxSideField(StrictIntegerField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            min_value=SIDE_MIN,
            max_value=SIDE_MAX,
            validators=[multiple_of_8],
            allow_null=True,
            **kwargs,
        )


def _policy_fields(*, put: bool) -> dict[str, serializers.Field]:
    """The policy's fields; a PUT's absent field takes its default (no limit), a PATCH's stays."""

    def absent(default: Any) -> dict[str, Any]:
        return {"required": False, "default": default} if put else {"required": False}

    return {
        "allowed_models": serializers.ListField(
            child=StrictCharField(max_length=SLUG_MAX_CHARS, validators=[_SLUG]),
            max_length=MAX_LIST_ITEMS,
            help_text="The models of your catalog the guild may use; empty: all of them.",
            **absent(list),
        ),
        "allowed_channels": serializers.ListField(
            child=StrictCharField(max_length=20, validators=[SNOWFLAKE]),
            max_length=MAX_LIST_ITEMS,
            help_text="The channels (ids) where the commands work; empty: every channel.",
            **absent(list),
        ),
        "max_steps": StrictIntegerField(
            min_value=1,
            max_value=MAX_STEPS_CEILING,
            allow_null=True,
            help_text="The most denoising steps a request may ask for; null: no limit of the "
            "guild's own.",
            **absent(None),
        ),
        "max_side": MaxSideField(**absent(None)),
        "default_negative_prompt": StrictCharField(
            max_length=NEGATIVE_PROMPT_MAX_CHARS,
            allow_blank=True,
            help_text="Used when a request gives no negative prompt.",
            **absent(""),
        ),
        "daily_images_per_user": StrictIntegerField(
            min_value=1,
            max_value=DAILY_IMAGES_MAX,
            allow_null=True,
            help_text="How many images each member may make a day; null: no limit.",
            **absent(None),
        ),
    }


class DiscordGuildPolicyPutSerializer(StrictSerializer):
    """PUT: the guild's whole policy; an absent field takes its default (no limit). Unknown
    fields are refused; the guild is the one in the path."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return _policy_fields(put=True)


class DiscordGuildPolicyUpdateSerializer(StrictSerializer):
    """PATCH: the fields given change, the others stay; unknown fields are refused."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return _policy_fields(put=False)


class DiscordPageQuerySerializer(QuerySerializer):
    cursor = StrictCharField(
        required=False, help_text="From a page's `next` or `previous` link; nothing else."
    )
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)


# --- output --------------------------------------------------------------------------------------


class DiscordApplicationSerializer(serializers.ModelSerializer):
    """The public application object; its bot token is never part of it."""

    id = serializers.CharField(source="public_id", help_text="Our id of the application.")
    interactions_url = serializers.SerializerMethodField()
    upscale_model = serializers.CharField(help_text="A model's slug; empty: no Upscale button.")
    commands_registered_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When the slash commands were last registered with Discord; null: not yet.",
    )

    class Meta:
        model = DiscordApplication
        fields = [
            "id",
            "application_id",
            "public_key",
            "interactions_url",
            "upscale_model",
            "commands_registered_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(
        serializers.URLField(
            help_text="Set this as the application's Interactions Endpoint URL at Discord."
        )
    )
    def get_interactions_url(self, application: DiscordApplication) -> str:
        return interactions_url(application)


class DiscordGuildPolicySerializer(serializers.ModelSerializer):
    allowed_models = serializers.ListField(
        child=serializers.CharField(), help_text="Model slugs; empty: all."
    )
    allowed_channels = serializers.ListField(
        child=serializers.CharField(), help_text="Channel ids; empty: all."
    )

    class Meta:
        model = GuildPolicy
        fields = ["guild_id", *GuildPolicy.RULES, "created_at", "updated_at"]
        read_only_fields = fields
