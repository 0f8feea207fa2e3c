from typing import Any

from django.contrib import admin
from django.template import engines
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView
from rest_framework.renderers import JSONRenderer, TemplateHTMLRenderer
from rest_framework.response import Response

from sdsaas.errors import json_not_found

handler400 = "sdsaas.errors.json_bad_request"
handler404 = "sdsaas.errors.json_not_found"
handler500 = "sdsaas.errors.json_server_error"


# drf-spectacular's Redoc page with its head replaced: the stock head links Google Fonts, and the
# docs must load from this app alone (the Redoc bundle itself comes from drf-spectacular-sidecar).
_REDOC_PAGE = engines["django"].from_string(
    '{% extends "drf_spectacular/redoc.html" %}{% block head %}'
    "<title>{{ title }}</title>"
    '<meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    "<style>body { margin: 0; padding: 0; }</style>"
    "{% endblock head %}"
)


class _RedocRenderer(TemplateHTMLRenderer):
    def resolve_template(self, template_names: Any) -> Any:
        return _REDOC_PAGE


class _JsonRefusals:
    """A refusal of the schema or docs page (a 405, a 406, a `?format` it has no renderer for: a
    404) in the API's error shape, as JSON: not as the YAML or HTML page it serves otherwise."""

    def handle_exception(self, exc: Exception) -> Response:
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        request = self.request  # type: ignore[attr-defined]
        request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        return response


class SchemaView(_JsonRefusals, SpectacularAPIView):
    pass


class RedocView(_JsonRefusals, SpectacularRedocView):
    renderer_classes = [_RedocRenderer]


urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", include("jobs.urls")),
    path("v1/webhooks/", include("integrations.webhooks.urls")),
    path("v1/discord/", include("integrations.discord.urls")),
    path(
        "v1/schema",
        SchemaView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    path(
        "v1/docs",
        RedocView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="docs",
    ),
    # Last: any other path is the uniform 404. Without it DEBUG answers an unknown path with an
    # HTML page listing every URL pattern; csrf_exempt so that a POST is a 404 too, not a 403.
    re_path(r"^", csrf_exempt(json_not_found)),
]
