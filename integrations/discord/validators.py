"""The formats of what a tenant registers, shared by the API's serializers and the admin's forms
(Django validators: both run them, and drf-spectacular writes a RegexValidator's pattern into
the schema). `\\A…\\Z`, not `^…$`: in Python `$` also matches before a final newline."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

BOT_TOKEN_MAX_CHARS = 100

# Discord's ids: 64-bit integers written in decimal, 17 to 20 digits for any id made since 2015.
SNOWFLAKE = RegexValidator(r"\A[0-9]{17,20}\Z", "Must be a Discord id: 17 to 20 digits.")
PUBLIC_KEY_HEX = RegexValidator(
    r"\A[0-9a-fA-F]{64}\Z", "Must be the application's public key: 64 hexadecimal characters."
)
# Visible ASCII without spaces: a token pasted with a newline or quotes would fail every call.
BOT_TOKEN_CHARS = RegexValidator(
    r"\A[!-~]+\Z", "Must be the bot token as Discord shows it: no spaces or other characters."
)


def ed25519_public_key(value: str) -> None:
    """A point of the Ed25519 group, as every key Discord issues is: 64 hex digits alone let
    through keys that no signature can match, and every interaction would then be refused."""
    try:
        # VerifyKey checks the length only; the conversion checks the point itself.
        VerifyKey(bytes.fromhex(value)).to_curve25519_public_key()
    except (ValueError, TypeError, CryptoError):
        raise ValidationError("Is not a valid Ed25519 public key.", code="invalid") from None


class SnowflakeConverter:
    """A Discord id in a path (`<snowflake:guild_id>`): any other segment is the catch-all 404
    before any query, like a public id that cannot exist."""

    regex = "[0-9]{17,20}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value
