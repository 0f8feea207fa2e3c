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
        """The interaction in a signed body; InvalidInput (a 400) for any part of another shape
        than Discord's: ids of 17 to 20 digits, integers, objects where objects are."""
        member = _object(payload, "member")
        user = _object(member, "user") or _object(payload, "user")
        channel = payload.get("channel_id") or _object(payload, "channel").get("id")
        message = _object(payload, "message")
        _snowflake(message.get("id"), "message.id")
        return cls(
            id=_snowflake(payload.get("id"), "id", required=True),
            type=_integer(payload.get("type"), "type", required=True),
            token=_token(payload.get("token")),
            guild_id=_snowflake(payload.get("guild_id"), "guild_id"),
            channel_id=_snowflake(channel, "channel_id"),
            user_id=_snowflake(user.get("id"), "user.id"),
            permissions=_integer(member.get("permissions"), "member.permissions"),
            data=_object(payload, "data"),
            message=message,
        )


# Discord's ids, as its payloads write them (strings); its permissions, a decimal string.
_SNOWFLAKE = re.compile(r"\A[0-9]{17,20}\Z")
_DIGITS = re.compile(r"\A[0-9]{1,20}\Z")
# An interaction token: visible ASCII (a few hundred characters in practice).
_TOKEN = re.compile(r"\A[!-~]{0,1000}\Z")


def _not_an_interaction(field: str, what: str) -> InvalidInput:
    return InvalidInput("body", f"not an interaction: {field} is not {what}")


def _object(parent: dict[str, Any], field: str) -> dict[str, Any]:
    value = parent.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _not_an_interaction(field, "an object")
    return value


def _snowflake(value: Any, field: str, *, required: bool = False) -> str:
    if value in (None, "") and not required:
        return ""
    if not isinstance(value, str | int) or not _SNOWFLAKE.match(str(value)):
        raise _not_an_interaction(field, "a Discord id")
    return str(value)


def _integer(value: Any, field: str, *, required: bool = False) -> int:
    if value in (None, "") and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _not_an_interaction(field, "an integer")
    if not _DIGITS.match(str(value)):
        raise _not_an_interaction(field, "an integer")
    return int(value)


def _token(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise _not_an_interaction("token", "a token")
    return value


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
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past Python's limit
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
