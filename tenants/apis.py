from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.authentication import request_tenant
from tenants.selectors import usage_summary


class UsageSerializer(serializers.Serializer):
    period = serializers.DictField()
    credits = serializers.DictField(child=serializers.IntegerField())
    concurrency = serializers.DictField(child=serializers.IntegerField())
    limits = serializers.DictField(child=serializers.IntegerField())


class UsageApi(APIView):
    required_scopes = {"GET": "jobs:read"}

    @extend_schema(operation_id="usage_retrieve", responses={200: UsageSerializer})
    def get(self, request: Request) -> Response:
        return Response(UsageSerializer(usage_summary(tenant=request_tenant(request))).data)
