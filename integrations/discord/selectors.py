"""Reads of Discord applications and their guild policies, always of one tenant: another's is a
404, the same as a missing one. The interactions endpoint alone looks an application up without
a tenant (`application_by_public_id`): the application is what names the tenant there."""

from __future__ import annotations

from django.db.models import QuerySet

from integrations.discord.models import DiscordApplication, GuildPolicy
from sdsaas.errors import NotFound
from tenants.models import Tenant


def application_list(*, tenant: Tenant) -> QuerySet[DiscordApplication]:
    return DiscordApplication.objects.filter(tenant=tenant).order_by("-id")


def application_get(*, tenant: Tenant, public_id: str) -> DiscordApplication:
    application = DiscordApplication.objects.filter(tenant=tenant, public_id=public_id).first()
    if application is None:
        raise NotFound(f"No Discord application {public_id}.")
    return application


def application_by_public_id(public_id: str) -> DiscordApplication | None:
    """The application with its tenant, whoever owns it; None when there is none."""
    return DiscordApplication.objects.select_related("tenant").filter(public_id=public_id).first()


def guild_policy_list(*, tenant: Tenant, public_id: str) -> QuerySet[GuildPolicy]:
    """The policies of the tenant's application `public_id`, newest first."""
    application = application_get(tenant=tenant, public_id=public_id)
    return GuildPolicy.objects.filter(application=application).order_by("-id")


def guild_policy_get(*, tenant: Tenant, public_id: str, guild_id: str) -> GuildPolicy:
    """The policy of `guild_id` for the tenant's application `public_id`."""
    application = application_get(tenant=tenant, public_id=public_id)
    policy = GuildPolicy.objects.filter(application=application, guild_id=guild_id).first()
    if policy is None:
        raise NotFound(f"No policy for guild {guild_id} of Discord application {public_id}.")
    return policy
