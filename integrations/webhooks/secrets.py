"""Signing secrets: made here, shown once, stored encrypted with keys of our own.

A secret is `whsec_` + base64 of 32 random bytes (the Standard Webhooks form). It is stored
encrypted with SDSAAS_WEBHOOK_SECRET_KEYS (Fernet keys, never SECRET_KEY): the first key
encrypts, every key decrypts. To rotate the keys without downtime:
1. put a new key first, keeping the old ones after it, and restart;
2. run `manage.py webhook_secrets_reencrypt` (every stored secret under the new key);
3. drop the old key.
"""

from __future__ import annotations

import base64
import functools
import secrets

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def secret_new() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


@functools.cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def _keys() -> MultiFernet:
    return _fernet(tuple(settings.WEBHOOK_SECRET_KEYS))


def secret_encrypt(secret: str) -> str:
    return _keys().encrypt(secret.encode()).decode()


def secret_decrypt(token: str) -> str:
    return _keys().decrypt(token.encode()).decode()


def secret_reencrypt(token: str) -> str:
    """The same secret, encrypted under the first key."""
    return _keys().rotate(token.encode()).decode()
