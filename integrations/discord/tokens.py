"""Bot and interaction tokens at rest: encrypted with SDSAAS_DISCORD_TOKEN_KEYS
(integrations/sealing.py). To rotate the keys, put a new key first and restart, run
`manage.py discord_tokens_reencrypt`, then drop the old key."""

from __future__ import annotations

from django.conf import settings

from integrations.sealing import reseal, seal, unseal


def token_encrypt(token: str) -> str:
    return seal(settings.DISCORD_TOKEN_KEYS, token)


def token_decrypt(sealed: str) -> str:
    return unseal(settings.DISCORD_TOKEN_KEYS, sealed)


def token_reencrypt(sealed: str) -> str:
    """The same token, encrypted under the first key."""
    return reseal(settings.DISCORD_TOKEN_KEYS, sealed)
