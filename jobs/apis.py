"""Thin views of API v1: validate, call one service or selector, serialize."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from jobs import selectors
from jobs.serializers import (
    JobFilterSerializer,
    JobInputSerializer,
    JobSerializer,
    LoraSerializer,
    ModelSerializer,
    UploadInputSerializer,
    UploadSerializer,
)
from jobs.services.lifecycle import job_cancel
from jobs.services.submit import job_submit
from jobs.services.uploads import upload_create
from sdsaas.api import ApiView, NewestFirstPagination, error_responses
from sdsaas.errors import InvalidInput, PayloadTooLarge
from tenants.authentication import request_tenant
from tenants.selectors import usage_summary

READ = "jobs:read"
WRITE = "jobs:write"
IDEMPOTENCY_KEY_MAX_CHARS = 255
# Visible ASCII with spaces inside only: HTTP drops the spaces around a header value, and any
# other byte would arrive as whatever Latin-1 makes of it.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    type={
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX_CHARS,
        "pattern": IDEMPOTENCY_KEY_PATTERN,
    },
    location=OpenApiParameter.HEADER,
    required=False,
    description="Same key and same body within 24 h return the original object; the same key "
    "with another body is a 422. Up to 255 visible ASCII characters (spaces inside allowed).",
)
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
    if len(key) > IDEMPOTENCY_KEY_MAX_CHARS or not re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key):
        raise InvalidInput(
            "Idempotency-Key",
            f"must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} visible ASCII characters (spaces inside)",
        )
    return key


class JobListCreateApi(ApiView):
    required_scopes = {"GET": READ, "POST": WRITE}
    query_serializers = {"GET": JobFilterSerializer}

    @extend_schema(
        operation_id="jobs_create",
        request=JobInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={202: JobSerializer, **error_responses(402, 409, 413, 415, 422, 429)},
    )
    def post(self, request: Request) -> Response:
        payload = JobInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        job, _ = job_submit(
            tenant=request_tenant(request),
            data=dict(payload.validated_data),
            idempotency_key=idempotency_key(request),
        )
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(operation_id="jobs_list", responses={200: JOB_PAGE, **error_responses()})
    def get(self, request: Request) -> Response:
        jobs = selectors.job_list(
            tenant=request_tenant(request),
            status=self.query.get("status"),
            model_slug=self.query.get("model"),
        )
        paginator = NewestFirstPagination(page_size=self.query["limit"])
        page = paginator.paginate_queryset(jobs, request, view=self) or []
        # The page's queue positions in one query, not one per queued job.
        positions = selectors.job_queue_positions(tenant=request_tenant(request), jobs=page)
        serializer = JobSerializer(page, many=True, context={"queue_positions": positions})
        return paginator.get_paginated_response(serializer.data)


class JobDetailApi(ApiView):
    required_scopes = {"GET": READ}

    @extend_schema(
        operation_id="jobs_retrieve", responses={200: JobSerializer, **error_responses(404)}
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(tenant=request_tenant(request), public_id=job_id)
        return Response(JobSerializer(job).data)


class JobCancelApi(ApiView):
    required_scopes = {"POST": WRITE}

    @extend_schema(
        operation_id="jobs_cancel",
        request=None,
        responses={200: JobSerializer, **error_responses(404, 409)},
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = job_cancel(tenant=request_tenant(request), job_public_id=job_id)
        return Response(JobSerializer(job).data)


def _listing(data: Any) -> dict[str, Any]:
    return {"results": data}


class ModelListApi(ApiView):
    required_scopes = {"GET": READ}

    @extend_schema(
        operation_id="models_list",
        responses={
            200: inline_serializer("ModelList", {"results": ModelSerializer(many=True)}),
            **error_responses(),
        },
    )
    def get(self, request: Request) -> Response:
        models = selectors.model_list(tenant=request_tenant(request))
        return Response(_listing(ModelSerializer(models, many=True).data))


class LoraListApi(ApiView):
    required_scopes = {"GET": READ}

    @extend_schema(
        operation_id="loras_list",
        responses={
            200: inline_serializer("LoraList", {"results": LoraSerializer(many=True)}),
            **error_responses(),
        },
    )
    def get(self, request: Request) -> Response:
        loras = selectors.lora_list(tenant=request_tenant(request))
        return Response(_listing(LoraSerializer(loras, many=True).data))


# What a multipart body carries beside its file: the part headers, boundaries, other fields.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def declared_length(request: Request) -> int:
    try:
        return max(0, int(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


class UploadCreateApi(ApiView):
    required_scopes = {"POST": WRITE}
    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="uploads_create",
        request={"multipart/form-data": UploadInputSerializer},
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: UploadSerializer, **error_responses(409, 413, 415, 422, 429)},
    )
    def post(self, request: Request) -> Response:
        # A body too long to hold a file within the cap is refused before it is parsed: the
        # parser would first write all of it to a temporary file.
        if declared_length(request) > settings.UPLOAD_MAX_BYTES + MULTIPART_OVERHEAD_BYTES:
            raise PayloadTooLarge(f"file exceeds {settings.UPLOAD_MAX_BYTES} bytes")
        payload = UploadInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        # One byte past the cap is enough for the service to refuse it (413); reading the whole
        # file would let one request hold an upload of any size in memory.
        data = payload.validated_data["file"].read(settings.UPLOAD_MAX_BYTES + 1)
        upload, _ = upload_create(
            tenant=request_tenant(request), data=data, idempotency_key=idempotency_key(request)
        )
        return Response(UploadSerializer(upload).data, status=status.HTTP_201_CREATED)


class UsageSerializer(serializers.Serializer):
    period = serializers.DictField()
    credits = serializers.DictField(child=serializers.IntegerField())
    concurrency = serializers.DictField(child=serializers.IntegerField())
    limits = serializers.DictField(child=serializers.IntegerField())


class UsageApi(ApiView):
    """Here rather than in tenants, which owns the rest of usage: the count of jobs in flight is
    jobs', and tenants never imports jobs."""

    required_scopes = {"GET": READ}

    @extend_schema(
        operation_id="usage_retrieve", responses={200: UsageSerializer, **error_responses()}
    )
    def get(self, request: Request) -> Response:
        tenant = request_tenant(request)
        usage = usage_summary(
            tenant=tenant, jobs_in_flight=selectors.jobs_in_flight_count(tenant=tenant)
        )
        return Response(UsageSerializer(usage).data)
