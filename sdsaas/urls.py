from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

handler404 = "sdsaas.errors.json_not_found"
handler500 = "sdsaas.errors.json_server_error"


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for the load balancer: the process serves requests."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("v1/", include("jobs.urls")),
    path("v1/", include("tenants.urls")),
    path(
        "v1/schema",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    path(
        "v1/docs",
        SpectacularRedocView.as_view(
            url_name="schema", authentication_classes=[], permission_classes=[]
        ),
        name="docs",
    ),
]
