"""Thin views of the webhook API (`/v1/webhooks/…`): validate, call one service or selector,
serialize. Every operation needs the `webhooks:manage` scope."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from integrations.webhooks import selectors
from integrations.webhooks.serializers import (
    DeliveryFilterSerializer,
    PageQuerySerializer,
    WebhookEndpointCreateSerializer,
    WebhookEndpointSerializer,
    WebhookEndpointUpdateSerializer,
    WebhookEndpointWithSecretSerializer,
    WebhookMessageSerializer,
    WebhookRedeliveredCountSerializer,
    WebhookRedeliverFailedSerializer,
    WebhookSecretSerializer,
)
from integrations.webhooks.services.endpoints import (
    MAX_ENDPOINTS_PER_TENANT,
    endpoint_create,
    endpoint_delete,
    endpoint_rotate_secret,
    endpoint_send_test,
    endpoint_update,
    job_secret_issue,
    message_redeliver,
    messages_redeliver_failed,
)
from sdsaas.api import ERROR, ApiView, NewestFirstPagination, error_responses, page_schema
from tenants.authentication import request_tenant
from tenants.models import ApiKey

MANAGE = ApiKey.Scope.WEBHOOKS_MANAGE.value
TOO_MANY_ENDPOINTS = {
    409: OpenApiResponse(
        ERROR, description=f"The tenant has {MAX_ENDPOINTS_PER_TENANT} endpoints, the most it may."
    )
}


class EndpointListCreateApi(ApiView):
    required_scopes = {"GET": MANAGE, "POST": MANAGE}
    query_serializers = {"GET": PageQuerySerializer}

    @extend_schema(
        operation_id="webhook_endpoints_create",
        request=WebhookEndpointCreateSerializer,
        responses={
            201: WebhookEndpointWithSecretSerializer,
            **error_responses(413, 415),
            **TOO_MANY_ENDPOINTS,
        },
    )
    def post(self, request: Request) -> Response:
        """A new endpoint; the answer holds its signing secret, which is never shown again."""
        payload = WebhookEndpointCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        endpoint, secret = endpoint_create(tenant=request_tenant(request), **payload.validated_data)
        data = WebhookEndpointWithSecretSerializer(endpoint, context={"secret": secret}).data
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="webhook_endpoints_list",
        responses={
            200: page_schema("WebhookEndpointPage", WebhookEndpointSerializer(many=True)),
            **error_responses(),
        },
    )
    def get(self, request: Request) -> Response:
        """The tenant's endpoints, newest first."""
        endpoints = selectors.endpoint_list_with_notices(tenant=request_tenant(request))
        paginator = NewestFirstPagination(page_size=self.query["limit"])
        page = paginator.paginate_queryset(endpoints, request, view=self) or []
        return paginator.get_paginated_response(WebhookEndpointSerializer(page, many=True).data)


class EndpointDetailApi(ApiView):
    required_scopes = {"GET": MANAGE, "PATCH": MANAGE, "DELETE": MANAGE}

    @extend_schema(
        operation_id="webhook_endpoints_retrieve",
        responses={200: WebhookEndpointSerializer, **error_responses(404)},
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        endpoint = selectors.endpoint_get(tenant=request_tenant(request), public_id=endpoint_id)
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhook_endpoints_update",
        request=WebhookEndpointUpdateSerializer,
        responses={200: WebhookEndpointSerializer, **error_responses(404, 413, 415)},
    )
    def patch(self, request: Request, endpoint_id: str) -> Response:
        """Change the fields given; the others stay."""
        payload = WebhookEndpointUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        endpoint = endpoint_update(
            tenant=request_tenant(request), endpoint_id=endpoint_id, **payload.validated_data
        )
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhook_endpoints_destroy",
        responses={204: OpenApiResponse(description="Deleted."), **error_responses(404)},
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        """Delete the endpoint with its messages and their log."""
        endpoint_delete(tenant=request_tenant(request), endpoint_id=endpoint_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndpointRotateSecretApi(ApiView):
    required_scopes = {"POST": MANAGE}

    @extend_schema(
        operation_id="webhook_endpoints_rotate_secret",
        request=None,
        responses={200: WebhookEndpointWithSecretSerializer, **error_responses(404)},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        """A new signing secret, shown this once. The previous one signs too for the rotation
        window (24 h unless configured otherwise): each delivery carries both signatures."""
        endpoint, secret = endpoint_rotate_secret(
            tenant=request_tenant(request), endpoint_id=endpoint_id
        )
        return Response(
            WebhookEndpointWithSecretSerializer(endpoint, context={"secret": secret}).data
        )


class EndpointTestApi(ApiView):
    required_scopes = {"POST": MANAGE}

    @extend_schema(
        operation_id="webhook_endpoints_test",
        request=None,
        responses={202: WebhookMessageSerializer, **error_responses(404)},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        """Send a `webhook.test` event to the endpoint, whatever it subscribes to."""
        message = endpoint_send_test(tenant=request_tenant(request), endpoint_id=endpoint_id)
        return Response(WebhookMessageSerializer(message).data, status=status.HTTP_202_ACCEPTED)


class EndpointDeliveriesApi(ApiView):
    required_scopes = {"GET": MANAGE}
    query_serializers = {"GET": DeliveryFilterSerializer}

    @extend_schema(
        operation_id="webhook_endpoints_deliveries",
        responses={
            200: page_schema("WebhookMessagePage", WebhookMessageSerializer(many=True)),
            **error_responses(404),
        },
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        """The delivery log: the endpoint's messages, newest first, each with its attempts."""
        messages = selectors.endpoint_deliveries(
            tenant=request_tenant(request),
            endpoint_id=endpoint_id,
            status=self.query.get("status"),
        )
        paginator = NewestFirstPagination(page_size=self.query["limit"])
        page = paginator.paginate_queryset(messages, request, view=self) or []
        return paginator.get_paginated_response(WebhookMessageSerializer(page, many=True).data)


class EndpointRedeliverFailedApi(ApiView):
    required_scopes = {"POST": MANAGE}

    @extend_schema(
        operation_id="webhook_endpoints_redeliver_failed",
        request=WebhookRedeliverFailedSerializer,
        responses={202: WebhookRedeliveredCountSerializer, **error_responses(404, 413, 415)},
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        """Send again every failed message of the endpoint created since a time."""
        payload = WebhookRedeliverFailedSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        count = messages_redeliver_failed(
            tenant=request_tenant(request),
            endpoint_id=endpoint_id,
            since=payload.validated_data["since"],
        )
        return Response(
            WebhookRedeliveredCountSerializer({"count": count}).data,
            status=status.HTTP_202_ACCEPTED,
        )


class MessageRedeliverApi(ApiView):
    required_scopes = {"POST": MANAGE}

    @extend_schema(
        operation_id="webhook_deliveries_redeliver",
        request=None,
        responses={202: WebhookMessageSerializer, **error_responses(404)},
    )
    def post(self, request: Request, message_id: str) -> Response:
        """Send a delivered or failed message again now, with the same `webhook-id`; one still
        waiting for its next attempt is left as it is."""
        message = message_redeliver(tenant=request_tenant(request), message_id=message_id)
        return Response(WebhookMessageSerializer(message).data, status=status.HTTP_202_ACCEPTED)


class JobSecretApi(ApiView):
    required_scopes = {"POST": MANAGE}

    @extend_schema(
        operation_id="webhook_job_secret_issue",
        request=None,
        responses={201: WebhookSecretSerializer, **error_responses()},
    )
    def post(self, request: Request) -> Response:
        """Issue the tenant's secret for per-job webhooks (a job's `webhook` field); shown this
        once. The one it replaces signs too (a second signature) for the rotation window."""
        secret = job_secret_issue(tenant=request_tenant(request))
        return Response(
            WebhookSecretSerializer({"secret": secret}).data, status=status.HTTP_201_CREATED
        )
