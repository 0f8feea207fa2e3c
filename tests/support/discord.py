"""Discord's side of an interaction: real Ed25519 keys, signed bodies, its payloads."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from integrations.discord.models import DiscordApplication
from integrations.discord.tokens import token_encrypt
from tenants.models import Tenant

_ids = itertools.count(int(time.time() * 1000) << 22)


def snowflake() -> str:
    """A new Discord-like id (increasing, 19 digits)."""
    return str(next(_ids))


@dataclass
class DiscordApp:
    """A Discord application as Discord knows it: its id, its key pair and its bot token."""

    application_id: str = field(default_factory=snowflake)
    signing_key: SigningKey = field(default_factory=SigningKey.generate)
    bot_token: str = "bot-token-" + "x" * 50

    @property
    def public_key(self) -> str:
        return self.signing_key.verify_key.encode(HexEncoder).decode()

    def register(self, tenant: Tenant, **fields: Any) -> DiscordApplication:
        """This application registered by `tenant`, as the API registers it."""
        return DiscordApplication.objects.create(  # type: ignore[no-any-return]
            tenant=tenant,
            application_id=self.application_id,
            public_key=self.public_key,
            bot_token_encrypted=token_encrypt(self.bot_token),
            **fields,
        )

    def headers(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """Discord's signature headers over timestamp + body."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.signing_key.sign(stamp.encode() + body).signature.hex()
        return {
            "Content-Type": "application/json",
            "X-Signature-Ed25519": signature,
            "X-Signature-Timestamp": stamp,
        }

    def interaction(
        self,
        kind: int,
        data: dict[str, Any] | None = None,
        *,
        guild_id: str = "111111111111111111",
        channel_id: str = "222222222222222222",
        user_id: str = "333333333333333333",
        permissions: int = 0,
        message: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An interaction payload as Discord sends it (the fields we read, and a few more)."""
        payload: dict[str, Any] = {
            "id": snowflake(),
            "application_id": self.application_id,
            "type": kind,
            "token": f"itoken-{snowflake()}",
            "version": 1,
            "channel_id": channel_id,
            "app_permissions": "0",
            "locale": "en-US",
        }
        user = {"id": user_id, "username": "someone", "discriminator": "0"}
        if guild_id:
            payload["guild_id"] = guild_id
            payload["member"] = {"user": user, "permissions": str(permissions), "roles": []}
        else:
            payload["user"] = user
        if data is not None:
            payload["data"] = data
        if message is not None:
            payload["message"] = message
        return payload

    def imagine(self, **options: Any) -> dict[str, Any]:
        """A `/imagine` command with these options (prompt first)."""
        where = {k: options.pop(k) for k in ("guild_id", "channel_id", "user_id") if k in options}
        data = {
            "id": snowflake(),
            "name": "imagine",
            "type": 1,
            "options": [
                {"name": name, "type": 4 if isinstance(value, int) else 3, "value": value}
                for name, value in options.items()
            ],
        }
        return self.interaction(2, data, **where)

    def click(self, custom_id: str, message_id: str, **where: Any) -> dict[str, Any]:
        """A click on a button of message `message_id`."""
        data = {"custom_id": custom_id, "component_type": 2}
        return self.interaction(3, data, message={"id": message_id}, **where)


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
