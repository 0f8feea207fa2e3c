"""Thin views of API v1: validate, call one service or selector, serialize."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import selectors, services
from jobs.serializers import (
    JobFilterSerializer,
    JobInputSerializer,
    JobSerializer,
    LoraSerializer,
    ModelSerializer,
    UploadInputSerializer,
    UploadSerializer,
)
from sdsaas.errors import InvalidInput
from tenants.authentication import request_tenant

READ = "jobs:read"
WRITE = "jobs:write"
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    location=OpenApiParameter.HEADER,
    required=False,
    description="Same key and same body within 24 h return the original object.",
)
ERROR = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorBody",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": serializers.DictField(),
            },
        )
    },
)
ERRORS = {code: ERROR for code in (400, 401, 403, 404, 409, 413, 422, 429)}
# Reads that take no input can still be refused for the key: none, bad, or lacking the scope.
AUTH_ERRORS = {code: ERROR for code in (401, 403)}
JOB_PAGE = inline_serializer(
    "JobPage",
    {
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": JobSerializer(many=True),
    },
)


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key.strip() or len(key) > 255 or not key.isprintable():
        raise InvalidInput("Idempotency-Key", "must be 1 to 255 printable characters")
    return key


class JobPagination(CursorPagination):
    ordering = "-id"
    page_size = 20
    page_size_query_param = "limit"
    max_page_size = 100


class JobListCreateApi(APIView):
    required_scopes = {"GET": READ, "POST": WRITE}

    @extend_schema(
        operation_id="jobs_create",
        request=JobInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={202: JobSerializer, 402: ERROR, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        payload = JobInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        job, _ = services.job_submit(
            tenant=request_tenant(request),
            data=dict(payload.validated_data),
            idempotency_key=idempotency_key(request),
        )
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="jobs_list",
        parameters=[JobFilterSerializer],
        responses={200: JOB_PAGE, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        filters = JobFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        jobs = selectors.job_list(
            tenant=request_tenant(request),
            status=filters.validated_data.get("status"),
            model_slug=filters.validated_data.get("model"),
        )
        paginator = JobPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(JobSerializer(page, many=True).data)


class JobDetailApi(APIView):
    required_scopes = {"GET": READ}

    @extend_schema(operation_id="jobs_retrieve", responses={200: JobSerializer, **ERRORS})
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(tenant=request_tenant(request), public_id=job_id)
        return Response(JobSerializer(job).data)


class JobCancelApi(APIView):
    required_scopes = {"POST": WRITE}

    @extend_schema(
        operation_id="jobs_cancel", request=None, responses={200: JobSerializer, **ERRORS}
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = services.job_cancel(tenant=request_tenant(request), job_public_id=job_id)
        return Response(JobSerializer(job).data)


def _listing(data: Any) -> dict[str, Any]:
    return {"results": data}


class ModelListApi(APIView):
    required_scopes = {"GET": READ}

    @extend_schema(
        operation_id="models_list",
        responses={
            200: inline_serializer("ModelList", {"results": ModelSerializer(many=True)}),
            **AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        models = selectors.model_list(tenant=request_tenant(request))
        return Response(_listing(ModelSerializer(models, many=True).data))


class LoraListApi(APIView):
    required_scopes = {"GET": READ}

    @extend_schema(
        operation_id="loras_list",
        responses={
            200: inline_serializer("LoraList", {"results": LoraSerializer(many=True)}),
            **AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        loras = selectors.lora_list(tenant=request_tenant(request))
        return Response(_listing(LoraSerializer(loras, many=True).data))


class UploadCreateApi(APIView):
    required_scopes = {"POST": WRITE}
    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="uploads_create",
        request={"multipart/form-data": UploadInputSerializer},
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: UploadSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        payload = UploadInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        # One byte past the cap is enough for the service to refuse it (413); reading the whole
        # file would let one request hold an upload of any size in memory.
        data = payload.validated_data["file"].read(settings.UPLOAD_MAX_BYTES + 1)
        upload, _ = services.upload_create(
            tenant=request_tenant(request), data=data, idempotency_key=idempotency_key(request)
        )
        return Response(UploadSerializer(upload).data, status=status.HTTP_201_CREATED)
