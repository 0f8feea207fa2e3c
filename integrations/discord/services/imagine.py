"""Commands and buttons become ordinary jobs of the tenant: same quotas, admission and usage.

`/imagine` and the result's buttons (re-roll, vary, upscale) check the guild's policy, submit a
job through the jobs services, marked with its Discord origin, and create the reply that
follows it; the answer to Discord is a deferred reply (type 5), which the discord queue's
workers edit. A refusal (policy, quota, bad input) is answered at once, seen only by the user.

Idempotent per click: a button makes at most one job per (message, button, user), whatever
the number of clicks (the Idempotency-Key of the jobs services, with a seed derived from it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import TYPE_CHECKING, Any

from discord_interactions import InteractionResponseType
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from integrations.discord.commands import IMAGINE, size_parse
from integrations.discord.models import DiscordApplication, DiscordReply, GuildPolicy
from integrations.discord.render import custom_id_parse, message
from integrations.discord.services.replies import message_delete_send
from integrations.discord.tokens import token_encrypt
from jobs import selectors as job_selectors
from jobs.models import Job
from jobs.serializers import JobInputSerializer
from jobs.services.submit import job_submit
from sdsaas.api import SLUG
from sdsaas.contract import SEED_MAX
from sdsaas.errors import InvalidInput, ServiceError, validation_message

if TYPE_CHECKING:
    from integrations.discord.services.interactions import Interaction

# Discord's interaction tokens live 15 minutes; edits are not tried in the last seconds of it.
TOKEN_LIFETIME = dt.timedelta(minutes=15)
MANAGE_MESSAGES = 1 << 13  # Discord's permission bit
UPSCALE_STRENGTH = 0.3
AUTOCOMPLETE_MAX = 25  # Discord shows at most 25 choices
# What a re-roll keeps of the job it re-rolls (everything but the seed).
KEPT = ("prompt", "negative_prompt", "width", "height", "steps", "guidance", "scheduler")
KEPT_IMG2IMG = ("image", "strength")


class Refused(Exception):
    """A request the guild's policy or the job services refuse: told to the user, no job."""


def _refusal(text: str) -> dict[str, Any]:
    return {
        "type": InteractionResponseType.CHANNEL_MESSAGE_WITH_SOURCE,
        "data": message(text, ephemeral=True),
    }


def imagine_command(*, application: DiscordApplication, interaction: Interaction) -> dict[str, Any]:
    """`/imagine`: a job from the command's options, and a deferred reply that follows it."""
    if interaction.data.get("name") != IMAGINE:
        return _refusal("This bot does not know that command.")
    options = {name: option.get("value") for name, option in _options(interaction).items()}
    policy = _policy(application=application, guild_id=interaction.guild_id)
    try:
        data = _command_input(application=application, policy=policy, options=options)
        return _submit(
            application=application,
            interaction=interaction,
            policy=policy,
            data=data,
            idempotency_key=f"discord:{interaction.id}",
        )
    except Refused as refused:
        return _refusal(str(refused))


def imagine_component(
    *, application: DiscordApplication, interaction: Interaction
) -> dict[str, Any]:
    """A click on a result's button."""
    action = custom_id_parse(str(interaction.data.get("custom_id") or ""))
    source = None
    if action is not None:
        source = (
            Job.objects.select_related("model")
            .filter(
                tenant=application.tenant,
                public_id=action.job_id,
                status=Job.Status.SUCCEEDED,
                pk__in=DiscordReply.objects.filter(application=application).values("job_id"),
            )
            .first()
        )
    if action is None or source is None:
        return _refusal("This image is no longer available.")
    if action.action == "delete":
        return _delete(application=application, interaction=interaction, source=source)
    policy = _policy(application=application, guild_id=interaction.guild_id)
    try:
        if action.action == "reroll":
            data = _kept(source)
        elif action.action == "vary":
            data = {**_kept(source), "image": source.public_id, "strength": action.strength}
        else:
            data = _upscale_input(application=application, source=source)
        click = f"discord:{interaction.message.get('id')}:{interaction.data['custom_id']}"
        key = f"{click}:{interaction.user_id}"
        # The same key must carry the same input: the seed of a click is derived from it.
        data["seed"] = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8]) % (SEED_MAX + 1)
        return _submit(
            application=application,
            interaction=interaction,
            policy=policy,
            data=data,
            idempotency_key=key,
        )
    except Refused as refused:
        return _refusal(str(refused))


def imagine_autocomplete(
    *, application: DiscordApplication, interaction: Interaction
) -> dict[str, Any]:
    """Choices for the option being typed: the catalog's models, or the chosen model's LoRAs."""
    options = _options(interaction)
    focused = next((name for name, o in options.items() if o.get("focused")), "")
    typed = str(options.get(focused, {}).get("value") or "").lower()
    policy = _policy(application=application, guild_id=interaction.guild_id, lock=False)
    tenant = application.tenant
    slugs: list[str] = []
    if focused == "model":
        slugs = [m.slug for m in _allowed_models(tenant=tenant, policy=policy)]
    elif focused == "lora":
        loras = job_selectors.lora_list(tenant=tenant)
        model_slug = options.get("model", {}).get("value")
        model = None
        if isinstance(model_slug, str) and _is_slug(model_slug):
            model = job_selectors.model_get(tenant=tenant, slug=model_slug)
        if model is not None:
            loras = loras.filter(family=model.family)
        slugs = [lora.slug for lora in loras]
    choices = [{"name": slug, "value": slug} for slug in slugs if typed in slug.lower()]
    return {
        "type": InteractionResponseType.APPLICATION_COMMAND_AUTOCOMPLETE_RESULT,
        "data": {"choices": choices[:AUTOCOMPLETE_MAX]},
    }


def _is_slug(value: str) -> bool:
    try:
        SLUG(value)
    except ValidationError:
        return False
    return True


def _options(interaction: Interaction) -> dict[str, dict[str, Any]]:
    """The command's options by name; InvalidInput (a 400) for a list of another shape than
    Discord's. Their values are the job input's to check (`_submit`)."""
    options = interaction.data.get("options") or []
    if not isinstance(options, list) or not all(
        isinstance(option, dict) and isinstance(option.get("name"), str) for option in options
    ):
        raise InvalidInput("body", "not an interaction: data.options is not a list of options")
    return {option["name"]: option for option in options}


def _policy(
    *, application: DiscordApplication, guild_id: str, lock: bool = True
) -> GuildPolicy | None:
    """The guild's policy, locked for the transaction so that a user's daily count holds."""
    if not guild_id:
        return None
    policies = GuildPolicy.objects.filter(application=application, guild_id=guild_id)
    if lock:
        policies = policies.select_for_update()
    return policies.first()


def _allowed_models(*, tenant: Any, policy: GuildPolicy | None) -> QuerySet[Any]:
    models = job_selectors.model_list(tenant=tenant)
    if policy is not None and policy.allowed_models:
        models = models.filter(slug__in=policy.allowed_models)
    return models


def _command_input(
    *, application: DiscordApplication, policy: GuildPolicy | None, options: dict[str, Any]
) -> dict[str, Any]:
    model = options.get("model")
    if not model:
        first = _allowed_models(tenant=application.tenant, policy=policy).first()
        if first is None:
            raise Refused("No model is available to this bot.")
        model = first.slug
    # As sent: the job input's own checks (`_submit`) refuse a value of the wrong type.
    data: dict[str, Any] = {"model": model, "prompt": options.get("prompt")}
    negative = options.get("negative_prompt") or (policy.default_negative_prompt if policy else "")
    if negative:
        data["negative_prompt"] = negative
    if options.get("size"):
        try:
            data["width"], data["height"] = size_parse(str(options["size"]))
        except ValueError as exc:
            raise Refused(f"Unknown size {options['size']!r}.") from exc
    for name in ("steps", "seed"):
        if options.get(name) is not None:
            data[name] = options[name]
    if options.get("lora"):
        data["loras"] = [{"slug": options["lora"]}]
    return data


def _kept(source: Job) -> dict[str, Any]:
    spec = source.input
    data = {"model": source.model.slug, **{name: spec[name] for name in KEPT if name in spec}}
    data["loras"] = [{"slug": lora["slug"], "weight": lora["weight"]} for lora in spec["loras"]]
    data.update({name: spec[name] for name in KEPT_IMG2IMG if spec.get(name) is not None})
    if not data.get("negative_prompt"):
        data.pop("negative_prompt", None)
    return data


def _upscale_input(*, application: DiscordApplication, source: Job) -> dict[str, Any]:
    model = (
        job_selectors.model_get(tenant=application.tenant, slug=application.upscale_model)
        if application.upscale_model
        else None
    )
    if model is None:
        raise Refused("Upscaling is not available on this bot.")
    width, height = source.input["width"], source.input["height"]
    scale = min(2.0, model.max_side / max(width, height))
    if scale <= 1:
        raise Refused(f"This image is already as large as `{model.slug}` makes them.")
    return {
        "model": model.slug,
        "prompt": source.input["prompt"],
        "width": int(width * scale) // 8 * 8,
        "height": int(height * scale) // 8 * 8,
        "image": source.public_id,
        "strength": UPSCALE_STRENGTH,
    }


def _policy_check(
    *,
    application: DiscordApplication,
    policy: GuildPolicy | None,
    interaction: Interaction,
    data: dict[str, Any],
) -> None:
    if policy is None:
        return
    if policy.allowed_channels and interaction.channel_id not in policy.allowed_channels:
        places = ", ".join(f"<#{channel}>" for channel in policy.allowed_channels)
        raise Refused(f"Images are not made in this channel on this server; try {places}.")
    if policy.allowed_models and data["model"] not in policy.allowed_models:
        allowed = ", ".join(f"`{slug}`" for slug in policy.allowed_models)
        raise Refused(f"The model `{data['model']}` is not allowed here; allowed: {allowed}.")
    if policy.max_steps is not None and int(data.get("steps") or 0) > policy.max_steps:
        raise Refused(f"At most {policy.max_steps} steps on this server.")
    side = max(int(data.get("width") or 0), int(data.get("height") or 0))
    if policy.max_side is not None and side > policy.max_side:
        raise Refused(f"Images on this server are at most {policy.max_side} pixels a side.")
    if policy.daily_images_per_user is not None:
        midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        made = (
            DiscordReply.objects.filter(
                application=application,
                guild_id=interaction.guild_id,
                user_id=interaction.user_id,
                created_at__gte=midnight,
            )
            .exclude(job__status__in=[Job.Status.FAILED, Job.Status.CANCELED])
            .count()
        )
        if made >= policy.daily_images_per_user:
            raise Refused(
                f"You have made your {policy.daily_images_per_user} images for today on this "
                "server; more after midnight UTC."
            )


def _submit(
    *,
    application: DiscordApplication,
    interaction: Interaction,
    policy: GuildPolicy | None,
    data: dict[str, Any],
    idempotency_key: str,
) -> dict[str, Any]:
    # The checks of the REST API's input: Discord is another edge in front of the same jobs.
    payload = JobInputSerializer(data=data)
    if not payload.is_valid():
        raise Refused(validation_message(payload.errors))
    data = dict(payload.validated_data)
    _policy_check(application=application, policy=policy, interaction=interaction, data=data)
    origin = {
        "type": "discord",
        "guild_id": interaction.guild_id,
        "channel_id": interaction.channel_id,
        "user_id": interaction.user_id,
    }
    try:
        job, created = job_submit(
            tenant=application.tenant, data=data, idempotency_key=idempotency_key, origin=origin
        )
    except ServiceError as refused:  # quota, rate limit, input the catalog or plan refuses
        raise Refused(refused.message) from refused
    if not created:
        return _refusal("Already on it: see the reply to the first click.")
    now = timezone.now()
    DiscordReply.objects.create(
        application=application,
        job=job,
        interaction_id=interaction.id,
        token_encrypted=token_encrypt(interaction.token),
        token_expires_at=now + TOKEN_LIFETIME,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        user_id=interaction.user_id,
        changed_at=now,
    )
    # No hand-over here: Discord waits for this answer, and shows "thinking" until the first
    # edit, which the sweep makes within 2 s (or the job's start, whichever comes first).
    return {"type": InteractionResponseType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE}


def _delete(
    *, application: DiscordApplication, interaction: Interaction, source: Job
) -> dict[str, Any]:
    """Delete a result: by the user who asked for it, or a member who may manage messages."""
    asker = DiscordReply.objects.filter(job=source).values_list("user_id", flat=True).first()
    if interaction.user_id != asker and not interaction.permissions & MANAGE_MESSAGES:
        return _refusal("Only the one who asked for this image, or a moderator, can delete it.")
    channel_id, message_id = interaction.channel_id, str(interaction.message.get("id") or "")
    transaction.on_commit(
        lambda: message_delete_send(
            application_pk=application.pk, channel_id=channel_id, message_id=message_id
        )
    )
    return {"type": InteractionResponseType.DEFERRED_UPDATE_MESSAGE}
