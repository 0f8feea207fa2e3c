from django.apps import AppConfig


class DiscordConfig(AppConfig):
    name = "integrations.discord"
    label = "discord"
    default_auto_field = "django.db.models.BigAutoField"
