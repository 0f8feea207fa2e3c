"""Tenants' Discord applications and their guild policies; slash-command registration; the bot
tokens' key rotation.

Every service that a tenant calls takes the tenant explicitly: another tenant's application is a
404. The formats (ids, key, token) are checked at the edge (integrations/discord/validators.py);
these check what needs the world: the catalog, the applications already registered.
A bot token is encrypted before it is stored and never returned.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from integrations.discord import selectors
from integrations.discord.client import discord_client
from integrations.discord.commands import command_definitions
from integrations.discord.models import DiscordApplication, DiscordReply, GuildPolicy
from integrations.discord.tokens import token_decrypt, token_encrypt, token_reencrypt
from jobs.selectors import model_get
from sdsaas.errors import Conflict, InvalidInput
from tenants.models import Tenant

ALREADY_REGISTERED = "This Discord application is already registered."


class Unset(enum.Enum):
    """A PATCH's field that was not given (None is a value there: "no limit")."""

    UNSET = "unset"


UNSET = Unset.UNSET


def upscale_model_check(*, tenant: Tenant, slug: str, field: str = "upscale_model") -> None:
    """ "" (no upscaling) or a model of the tenant's catalog."""
    if slug and model_get(tenant=tenant, slug=slug) is None:
        raise InvalidInput(field, f"no model {slug!r} in the catalog")


def models_check(
    *, tenant: Tenant, slugs: Sequence[str], field: str = "allowed_models"
) -> list[str]:
    """The slugs, each once in the order given, every one a model of the tenant's catalog."""
    for index, slug in enumerate(slugs):
        if model_get(tenant=tenant, slug=slug) is None:
            raise InvalidInput(f"{field}[{index}]", f"no model {slug!r} in the catalog")
    return list(dict.fromkeys(slugs))


# --- applications --------------------------------------------------------------------------------


@transaction.atomic
def application_create(
    *,
    tenant: Tenant,
    application_id: str,
    public_key: str,
    bot_token: str,
    upscale_model: str = "",
) -> DiscordApplication:
    """Register the tenant's Discord application. One application belongs to one tenant: a
    second registration is a Conflict, whoever made the first (and it does not say who)."""
    upscale_model_check(tenant=tenant, slug=upscale_model)
    if DiscordApplication.objects.filter(application_id=application_id).exists():
        raise Conflict(ALREADY_REGISTERED)
    try:
        with transaction.atomic():  # a concurrent registration: the unique index decides
            return DiscordApplication.objects.create(
                tenant=tenant,
                application_id=application_id,
                public_key=public_key.lower(),
                bot_token_encrypted=token_encrypt(bot_token),
                upscale_model=upscale_model,
            )
    except IntegrityError:
        raise Conflict(ALREADY_REGISTERED) from None


@transaction.atomic
def application_update(
    *,
    tenant: Tenant,
    public_id: str,
    public_key: str | None = None,
    bot_token: str | None = None,
    upscale_model: str | None = None,
) -> DiscordApplication:
    """Change the fields given (None: unchanged); upscale_model "" turns upscaling off."""
    application = selectors.application_get(tenant=tenant, public_id=public_id)
    if upscale_model is not None:
        upscale_model_check(tenant=tenant, slug=upscale_model)
        application.upscale_model = upscale_model
    if public_key is not None:
        application.public_key = public_key.lower()
    if bot_token is not None:
        application.bot_token_encrypted = token_encrypt(bot_token)
    application.save()
    return application


@transaction.atomic
def application_delete(*, tenant: Tenant, public_id: str) -> None:
    """Delete the application with its policies and replies. Its commands stay registered at
    Discord until the bot is removed there; interactions to its URL are then 404s."""
    selectors.application_get(tenant=tenant, public_id=public_id).delete()


@dataclass(frozen=True)
class Registered:
    application: DiscordApplication
    commands: int  # how many commands Discord now has for it


def commands_register(*, tenant: Tenant, public_id: str) -> Registered:
    """Replace the application's global slash commands with ours (PUT, so running it again is
    harmless) and record when. Raises the client's DiscordError when Discord refuses (a wrong
    token is a 401) or cannot be reached (`retryable`); its message never holds the token.

    No transaction is held across the call to Discord: it can take seconds."""
    application = selectors.application_get(tenant=tenant, public_id=public_id)
    commands = discord_client().commands_overwrite(
        bot_token=token_decrypt(application.bot_token_encrypted),
        application_id=application.application_id,
        commands=command_definitions(),
    )
    now = timezone.now()
    DiscordApplication.objects.filter(pk=application.pk).update(
        commands_registered_at=now, updated_at=now
    )
    application.commands_registered_at = application.updated_at = now
    return Registered(application=application, commands=len(commands))


@transaction.atomic
def tokens_reencrypt() -> int:
    """Every stored token (bots' and interactions') under the first key of
    SDSAAS_DISCORD_TOKEN_KEYS (the keys' rotation); how many were rewritten."""
    count = 0
    for application in DiscordApplication.objects.select_for_update().only(
        "pk", "bot_token_encrypted"
    ):
        application.bot_token_encrypted = token_reencrypt(application.bot_token_encrypted)
        application.save(update_fields=["bot_token_encrypted"])
        count += 1
    for reply in DiscordReply.objects.select_for_update().only("pk", "token_encrypted"):
        reply.token_encrypted = token_reencrypt(reply.token_encrypted)
        reply.save(update_fields=["token_encrypted"])
        count += 1
    return count


# --- guild policies ------------------------------------------------------------------------------


@transaction.atomic
def guild_policy_put(
    *,
    tenant: Tenant,
    public_id: str,
    guild_id: str,
    allowed_models: Sequence[str] = (),
    allowed_channels: Sequence[str] = (),
    max_steps: int | None = None,
    max_side: int | None = None,
    default_negative_prompt: str = "",
    daily_images_per_user: int | None = None,
) -> tuple[GuildPolicy, bool]:
    """Create the guild's policy for the tenant's application `public_id`, or replace it whole
    (what is not given takes its default: no limit); the policy and whether it was created."""
    application = selectors.application_get(tenant=tenant, public_id=public_id)
    fields = {
        "allowed_models": models_check(tenant=tenant, slugs=allowed_models),
        "allowed_channels": list(dict.fromkeys(allowed_channels)),
        "max_steps": max_steps,
        "max_side": max_side,
        "default_negative_prompt": default_negative_prompt,
        "daily_images_per_user": daily_images_per_user,
    }
    # The application's row is locked first: two PUTs of a new guild wait for each other
    # instead of one failing on the unique constraint.
    DiscordApplication.objects.select_for_update().filter(pk=application.pk).first()
    policy, created = GuildPolicy.objects.update_or_create(
        application=application, guild_id=guild_id, defaults=fields
    )
    return policy, created


@transaction.atomic
def guild_policy_update(
    *,
    tenant: Tenant,
    public_id: str,
    guild_id: str,
    allowed_models: Sequence[str] | Unset = UNSET,
    allowed_channels: Sequence[str] | Unset = UNSET,
    max_steps: int | Unset | None = UNSET,
    max_side: int | Unset | None = UNSET,
    default_negative_prompt: str | Unset = UNSET,
    daily_images_per_user: int | Unset | None = UNSET,
) -> GuildPolicy:
    """Change the fields given; the others stay. A guild without a policy is NotFound."""
    policy = selectors.guild_policy_get(tenant=tenant, public_id=public_id, guild_id=guild_id)
    if not isinstance(allowed_models, Unset):
        policy.allowed_models = models_check(tenant=tenant, slugs=allowed_models)
    if not isinstance(allowed_channels, Unset):
        policy.allowed_channels = list(dict.fromkeys(allowed_channels))
    if not isinstance(max_steps, Unset):
        policy.max_steps = max_steps
    if not isinstance(max_side, Unset):
        policy.max_side = max_side
    if not isinstance(default_negative_prompt, Unset):
        policy.default_negative_prompt = default_negative_prompt
    if not isinstance(daily_images_per_user, Unset):
        policy.daily_images_per_user = daily_images_per_user
    policy.save()
    return policy


@transaction.atomic
def guild_policy_delete(*, tenant: Tenant, public_id: str, guild_id: str) -> None:
    """Delete the guild's policy."""
    selectors.guild_policy_get(tenant=tenant, public_id=public_id, guild_id=guild_id).delete()
