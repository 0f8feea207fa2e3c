"""Signing secrets: made here, shown once, stored encrypted with keys of our own.

A secret is `whsec_` + base64 of 32 random bytes (the Standard Webhooks form). It is stored
encrypted with SDSAAS_WEBHOOK_SECRET_KEYS (integrations/sealing.py): to rotate the keys, put a new
key first and restart, run `manage.py webhook_secrets_reencrypt`, then drop the old key.
"""

from __future__ import annotations

import base64
import secrets

from django.conf import settings

from integrations.sealing import reseal, seal, unseal

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def secret_new() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_encrypt(secret: str) -> str:
    return seal(settings.WEBHOOK_SECRET_KEYS, secret)


def secret_decrypt(token: str) -> str:
    return unseal(settings.WEBHOOK_SECRET_KEYS, token)


def secret_reencrypt(token: str) -> str:
    """The same secret, encrypted under the first key."""
    return reseal(settings.WEBHOOK_SECRET_KEYS, token)
