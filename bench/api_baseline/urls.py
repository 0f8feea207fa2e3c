"""The baseline's two views, on the API's paths so that the client sends the same requests."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.models import DiffusionModel, Job, public_id
from tenants.authentication import ApiKeyAuthentication, request_tenant


@functools.cache
def bench_model_id(slug: str) -> int:
    """The model's row id, read once per process (the warm-up pays for it)."""
    return int(DiffusionModel.objects.values_list("id", flat=True).get(slug=slug))


class BareJobCreate(APIView):
    """The API-key lookup and one INSERT: nothing checked, reserved, admitted or published."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        data: dict[str, Any] = dict(request.data)
        job = Job.objects.create(
            public_id=public_id("job"),
            tenant=request_tenant(request),
            model_id=bench_model_id(str(data["model"])),
            kind=Job.Kind.TXT2IMG,
            input=data,
            credit_month=dt.date.today().replace(day=1),
        )
        return Response({"id": job.public_id, "status": job.status}, status.HTTP_202_ACCEPTED)


class BareJobGet(APIView):
    """The API-key lookup and one SELECT of the tenant's job row."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsAuthenticated]

    def get(self, request: Request, job_id: str) -> Response:
        row = (
            Job.objects.filter(tenant=request_tenant(request), public_id=job_id)
            .values("public_id", "status", "input", "attempt", "created_at")
            .first()
        )
        if row is None:
            return Response({"error": {"code": "not_found"}}, status.HTTP_404_NOT_FOUND)
        return Response(row)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("healthz", healthz),
    path("v1/jobs", BareJobCreate.as_view()),
    path("v1/jobs/<str:job_id>", BareJobGet.as_view()),
]
