"""Receiving an interaction: who sent it, whether it is genuine, new and recent, and the answer.

Order matters, and is Discord's: the Ed25519 signature over timestamp + raw body is checked
before anything is read (Discord probes endpoints with bad signatures and drops those that
accept them); then the timestamp's age and the body's application; then the interaction id,
recorded in the same transaction as whatever the interaction does, so a replay does nothing.
The tenant is the application's, resolved from the endpoint's URL, never from the body.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from discord_interactions import InteractionResponseType, InteractionType, verify_key
from django.conf import settings
from django.db import IntegrityError, transaction

from integrations.discord import selectors
from integrations.discord.models import DiscordApplication, HandledInteraction
from integrations.discord.render import message
from integrations.discord.services.imagine import (
    imagine_autocomplete,
    imagine_command,
    imagine_component,
)
from sdsaas.errors import InvalidInput, NotFound, ServiceError

SIGNATURE = re.compile(r"\A[0-9a-fA-F]{128}\Z")
TIMESTAMP = re.compile(r"\A[0-9]{1,12}\Z")


class InteractionRefused(ServiceError):
    """Not a genuine, recent, new interaction of this application: answered 401, nothing done."""

    status_code = 401
    code = "invalid_interaction"


@dataclass(frozen=True)
class Interaction:
    """The parts of an interaction we act on (Discord's payload has many more)."""

    id: str
    type: int
    token: str
    guild_id: str  # blank in a direct message
    channel_id: str
    user_id: str
    permissions: int  # the member's permissions in the channel (0 in a direct message)
    data: dict[str, Any]
    message: dict[str, Any]  # the message a clicked component is on

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Interaction:
        member = payload.get("member") or {}
        user = member.get("user") or payload.get("user") or {}
        channel = payload.get("channel_id") or (payload.get("channel") or {}).get("id") or ""
        try:
            return cls(
                id=str(payload["id"]),
                type=int(payload["type"]),
                token=str(payload.get("token") or ""),
                guild_id=str(payload.get("guild_id") or ""),
                channel_id=str(channel),
                user_id=str(user.get("id") or ""),
                permissions=int(member.get("permissions") or 0),
                data=dict(payload.get("data") or {}),
                message=dict(payload.get("message") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput("body", f"not an interaction: {exc}") from exc


def interaction_receive(
    *, application_id: str, body: bytes, signature: str, timestamp: str
) -> dict[str, Any]:
    """The answer to one interaction POSTed to the endpoint of `application_id` (our public id).

    NotFound for an unknown application, InteractionRefused for a bad signature, a timestamp
    more than DISCORD_MAX_CLOCK_SKEW_S away, another application's body or a replayed id,
    InvalidInput for a signed body that is no interaction.
    """
    application = selectors.application_by_public_id(application_id)
    if application is None:
        raise NotFound("No such Discord application.")
    _verify(application=application, body=body, signature=signature, timestamp=timestamp)
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidInput("body", "not JSON") from exc
    if not isinstance(payload, dict):
        raise InvalidInput("body", "not a JSON object")
    if str(payload.get("application_id")) != application.application_id:
        raise InteractionRefused("The interaction is not for this application.")
    interaction = Interaction.from_payload(payload)
    with transaction.atomic():
        _remember(application=application, interaction_id=interaction.id)
        return _answer(application=application, interaction=interaction)


def _verify(
    *, application: DiscordApplication, body: bytes, signature: str, timestamp: str
) -> None:
    # The shape is checked first: verify_key prints whatever it fails on, and a malformed header
    # is refused the same way without that noise.
    if not SIGNATURE.match(signature) or not TIMESTAMP.match(timestamp):
        raise InteractionRefused("Missing or malformed signature headers.")
    if not verify_key(body, signature, timestamp, application.public_key):
        raise InteractionRefused("Bad signature.")
    if abs(time.time() - int(timestamp)) > settings.DISCORD_MAX_CLOCK_SKEW_S:
        raise InteractionRefused("The interaction's timestamp is too far from our clock.")


def _remember(*, application: DiscordApplication, interaction_id: str) -> None:
    try:
        with transaction.atomic():
            HandledInteraction.objects.create(
                interaction_id=interaction_id, application=application
            )
    except IntegrityError as exc:
        raise InteractionRefused("This interaction was already handled.") from exc


def _answer(*, application: DiscordApplication, interaction: Interaction) -> dict[str, Any]:
    kind = interaction.type
    if kind == InteractionType.PING:
        return {"type": InteractionResponseType.PONG}
    if kind == InteractionType.APPLICATION_COMMAND:
        return imagine_command(application=application, interaction=interaction)
    if kind == InteractionType.MESSAGE_COMPONENT:
        return imagine_component(application=application, interaction=interaction)
    if kind == InteractionType.APPLICATION_COMMAND_AUTOCOMPLETE:
        return imagine_autocomplete(application=application, interaction=interaction)
    return {
        "type": InteractionResponseType.CHANNEL_MESSAGE_WITH_SOURCE,
        "data": message("This bot does not handle that kind of interaction.", ephemeral=True),
    }
