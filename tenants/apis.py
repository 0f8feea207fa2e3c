from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from sdsaas.api import ApiView, error_responses
from tenants.authentication import request_tenant
from tenants.selectors import usage_summary


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents `Authorization: Bearer sk_live_…` in the schema (registered on import)."""

    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix="Bearer", bearer_format="sk_live_…"
        )


class UsageSerializer(serializers.Serializer):
    period = serializers.DictField()
    credits = serializers.DictField(child=serializers.IntegerField())
    concurrency = serializers.DictField(child=serializers.IntegerField())
    limits = serializers.DictField(child=serializers.IntegerField())


class UsageApi(ApiView):
    required_scopes = {"GET": "jobs:read"}

    @extend_schema(
        operation_id="usage_retrieve", responses={200: UsageSerializer, **error_responses()}
    )
    def get(self, request: Request) -> Response:
        return Response(UsageSerializer(usage_summary(tenant=request_tenant(request))).data)
