from django.urls import path, register_converter

import sdsaas.api  # noqa: F401  (registers the public_id path converter)
from integrations.discord import apis
from integrations.discord.validators import SnowflakeConverter

register_converter(SnowflakeConverter, "snowflake")

urlpatterns = [
    path("applications", apis.ApplicationListCreateApi.as_view(), name="discord-applications"),
    path(
        "applications/<public_id:app_id>",
        apis.ApplicationDetailApi.as_view(),
        name="discord-application-detail",
    ),
    path(
        "applications/<public_id:app_id>/guilds",
        apis.GuildPolicyListApi.as_view(),
        name="discord-guild-policies",
    ),
    path(
        "applications/<public_id:app_id>/guilds/<snowflake:guild_id>",
        apis.GuildPolicyDetailApi.as_view(),
        name="discord-guild-policy-detail",
    ),
    # Discord -> us: each application's Interactions Endpoint URL.
    path(
        "interactions/<public_id:application_id>",
        apis.InteractionsApi.as_view(),
        name="discord-interactions",
    ),
]
