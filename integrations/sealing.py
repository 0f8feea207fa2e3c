"""Secrets at rest, encrypted with key rings of our own (Fernet), never with SECRET_KEY.

Each integration has its ring (a settings list): the first key encrypts, every key decrypts. To
rotate a ring without downtime: put a new key first, keeping the old ones after it, and restart;
re-encrypt every stored secret under the new key (`reseal`, by the integration's command); then
drop the old key.
"""

from __future__ import annotations

import functools

from cryptography.fernet import Fernet, MultiFernet


@functools.cache
def _ring(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def seal(keys: list[str], secret: str) -> str:
    return _ring(tuple(keys)).encrypt(secret.encode()).decode()


def unseal(keys: list[str], sealed: str) -> str:
    return _ring(tuple(keys)).decrypt(sealed.encode()).decode()


def reseal(keys: list[str], sealed: str) -> str:
    """The same secret, encrypted under the first key."""
    return _ring(tuple(keys)).rotate(sealed.encode()).decode()
