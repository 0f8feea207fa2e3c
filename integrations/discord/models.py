"""Discord applications of tenants, their guild policies, the interactions handled and the
replies that follow jobs started from Discord."""

from __future__ import annotations

from django.db import models

from jobs.models import Job, public_id
from tenants.models import Tenant


def application_public_id() -> str:
    return public_id("dapp")


class DiscordApplication(models.Model):
    """A tenant's Discord application: interactions to its own endpoint act for that tenant."""

    public_id = models.CharField(max_length=32, unique=True, default=application_public_id)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, related_name="discord_applications"
    )
    # Discord's ids are snowflakes (decimal strings). One application belongs to one tenant.
    application_id = models.CharField(max_length=24, unique=True)
    public_key = models.CharField(max_length=64, help_text="Ed25519 public key, hex.")
    # Encrypted with SDSAAS_DISCORD_TOKEN_KEYS (integrations/discord/tokens.py), never shown again.
    bot_token_encrypted = models.TextField()
    # A catalog model that upscales (img2img at twice the size): results get an Upscale button.
    upscale_model = models.SlugField(max_length=40, blank=True)
    commands_registered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "id"])]

    def __str__(self) -> str:
        return f"{self.public_id} (Discord {self.application_id})"


class GuildPolicy(models.Model):
    """What one guild (server) may do with the application; enforced before any job is made."""

    # What a tenant sets (the API's PUT and PATCH), each with a default that sets no limit.
    RULES = (
        "allowed_models",
        "allowed_channels",
        "max_steps",
        "max_side",
        "default_negative_prompt",
        "daily_images_per_user",
    )

    application = models.ForeignKey(
        DiscordApplication, on_delete=models.CASCADE, related_name="guild_policies"
    )
    guild_id = models.CharField(max_length=24)
    allowed_models = models.JSONField(default=list, blank=True, help_text="Slugs; empty: all.")
    allowed_channels = models.JSONField(default=list, blank=True, help_text="Ids; empty: all.")
    max_steps = models.PositiveIntegerField(null=True, blank=True)
    max_side = models.PositiveIntegerField(null=True, blank=True, help_text="Pixels, each side.")
    default_negative_prompt = models.TextField(blank=True)
    daily_images_per_user = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["application", "guild_id"], name="one_policy_per_guild")
        ]

    def __str__(self) -> str:
        return f"guild {self.guild_id} of {self.application}"


class HandledInteraction(models.Model):
    """Every interaction id answered: a replayed one is refused. Kept a day (timestamps older
    than DISCORD_MAX_CLOCK_SKEW_S are refused anyway)."""

    interaction_id = models.CharField(max_length=24, unique=True)
    application = models.ForeignKey(DiscordApplication, on_delete=models.CASCADE, related_name="+")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return self.interaction_id


class DiscordReply(models.Model):
    """A job started from Discord and the message that shows it, kept up to date.

    The lifecycle's announcements bump `changed_at`; a sync renders the job as it is then and
    records what it rendered in `synced_at`. The reply is out of date while
    `changed_at > synced_at`: the dispatch sends it to the discord queue, at most one sync at a
    time (`sending_since`, a lease) and progress edits at most every DISCORD_EDIT_INTERVAL_S.
    """

    application = models.ForeignKey(
        DiscordApplication, on_delete=models.CASCADE, related_name="replies"
    )
    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="+")
    interaction_id = models.CharField(max_length=24)
    # The interaction token edits the deferred reply for 15 minutes; encrypted like bot tokens.
    token_encrypted = models.TextField()
    token_expires_at = models.DateTimeField()
    guild_id = models.CharField(max_length=24, blank=True)  # blank: a direct message
    channel_id = models.CharField(max_length=24)
    user_id = models.CharField(max_length=24)
    message_id = models.CharField(max_length=24, blank=True, help_text="The reply, once known.")
    # Past the token's life the result is posted to the channel with the bot token instead.
    channel_message_id = models.CharField(max_length=24, blank=True)
    changed_at = models.DateTimeField()
    synced_at = models.DateTimeField(null=True, blank=True)
    sending_since = models.DateTimeField(null=True, blank=True)
    # After a failed call that may succeed later: not before this; `failures` in a row.
    retry_at = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveSmallIntegerField(default=0)
    edited_at = models.DateTimeField(null=True, blank=True)
    shown = models.CharField(max_length=64, blank=True, help_text="Hash of the last payload.")
    done = models.BooleanField(default=False, help_text="The final state is shown.")
    error = models.CharField(max_length=256, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["done", "changed_at"]),
            models.Index(fields=["application", "guild_id", "user_id", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"reply to {self.interaction_id} for {self.job_id}"
