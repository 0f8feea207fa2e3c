"""Thin views of the Discord API (`/v1/discord/…`): validate, call one service or selector,
serialize. Managing applications and guild policies needs the `discord:manage` scope."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from integrations.discord import selectors
from integrations.discord.serializers import (
    DiscordApplicationCreateSerializer,
    DiscordApplicationSerializer,
    DiscordApplicationUpdateSerializer,
    DiscordGuildPolicyPutSerializer,
    DiscordGuildPolicySerializer,
    DiscordGuildPolicyUpdateSerializer,
    DiscordPageQuerySerializer,
)
from integrations.discord.services.applications import (
    application_create,
    application_delete,
    application_update,
    guild_policy_delete,
    guild_policy_put,
    guild_policy_update,
)
from integrations.discord.services.interactions import interaction_receive
from integrations.discord.validators import SnowflakeConverter
from sdsaas.api import (
    ERROR,
    ApiView,
    NewestFirstPagination,
    PublicIdConverter,
    error_responses,
    page_schema,
)
from sdsaas.error_shape import error_body
from sdsaas.errors import ServiceError
from tenants.authentication import request_tenant
from tenants.models import ApiKey

MANAGE = ApiKey.Scope.DISCORD_MANAGE.value
ALREADY_REGISTERED = {
    409: OpenApiResponse(
        ERROR,
        description="This Discord application is already registered, by this tenant or another.",
    )
}
APP_ID = OpenApiParameter(
    "app_id",
    str,
    OpenApiParameter.PATH,
    description="The application's id here (`dapp_…`), not Discord's application id.",
    pattern=f"^{PublicIdConverter.regex}$",
)
GUILD_ID = OpenApiParameter(
    "guild_id",
    str,
    OpenApiParameter.PATH,
    description="The guild's (server's) Discord id.",
    pattern=f"^{SnowflakeConverter.regex}$",
)


# --- applications --------------------------------------------------------------------------------


class ApplicationListCreateApi(ApiView):
    required_scopes = {"GET": MANAGE, "POST": MANAGE}
    query_serializers = {"GET": DiscordPageQuerySerializer}

    @extend_schema(
        operation_id="discord_applications_create",
        request=DiscordApplicationCreateSerializer,
        responses={
            201: DiscordApplicationSerializer,
            **error_responses(413, 415),
            **ALREADY_REGISTERED,
        },
    )
    def post(self, request: Request) -> Response:
        """Register a Discord application: its interactions then act for this tenant. Set the
        answer's `interactions_url` as the application's Interactions Endpoint URL at Discord.
        The bot token is stored encrypted and never shown again."""
        payload = DiscordApplicationCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        application = application_create(tenant=request_tenant(request), **payload.validated_data)
        return Response(
            DiscordApplicationSerializer(application).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        operation_id="discord_applications_list",
        responses={
            200: page_schema("DiscordApplicationPage", DiscordApplicationSerializer(many=True)),
            **error_responses(),
        },
    )
    def get(self, request: Request) -> Response:
        """The tenant's Discord applications, newest first."""
        applications = selectors.application_list(tenant=request_tenant(request))
        paginator = NewestFirstPagination(page_size=self.query["limit"])
        page = paginator.paginate_queryset(applications, request, view=self) or []
        return paginator.get_paginated_response(DiscordApplicationSerializer(page, many=True).data)


class ApplicationDetailApi(ApiView):
    required_scopes = {"GET": MANAGE, "PATCH": MANAGE, "DELETE": MANAGE}

    @extend_schema(
        operation_id="discord_applications_retrieve",
        parameters=[APP_ID],
        responses={200: DiscordApplicationSerializer, **error_responses(404)},
    )
    def get(self, request: Request, app_id: str) -> Response:
        application = selectors.application_get(tenant=request_tenant(request), public_id=app_id)
        return Response(DiscordApplicationSerializer(application).data)

    @extend_schema(
        operation_id="discord_applications_update",
        parameters=[APP_ID],
        request=DiscordApplicationUpdateSerializer,
        responses={200: DiscordApplicationSerializer, **error_responses(404, 413, 415)},
    )
    def patch(self, request: Request, app_id: str) -> Response:
        """Change the fields given; the others stay."""
        payload = DiscordApplicationUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        application = application_update(
            tenant=request_tenant(request), public_id=app_id, **payload.validated_data
        )
        return Response(DiscordApplicationSerializer(application).data)

    @extend_schema(
        operation_id="discord_applications_destroy",
        parameters=[APP_ID],
        responses={204: OpenApiResponse(description="Deleted."), **error_responses(404)},
    )
    def delete(self, request: Request, app_id: str) -> Response:
        """Delete the application with its guild policies: its interactions are refused from
        then on."""
        application_delete(tenant=request_tenant(request), public_id=app_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- guild policies ------------------------------------------------------------------------------


class GuildPolicyListApi(ApiView):
    required_scopes = {"GET": MANAGE}
    query_serializers = {"GET": DiscordPageQuerySerializer}

    @extend_schema(
        operation_id="discord_guild_policies_list",
        parameters=[APP_ID],
        responses={
            200: page_schema("DiscordGuildPolicyPage", DiscordGuildPolicySerializer(many=True)),
            **error_responses(404),
        },
    )
    def get(self, request: Request, app_id: str) -> Response:
        """The application's guild policies, newest first."""
        policies = selectors.guild_policy_list(tenant=request_tenant(request), public_id=app_id)
        paginator = NewestFirstPagination(page_size=self.query["limit"])
        page = paginator.paginate_queryset(policies, request, view=self) or []
        return paginator.get_paginated_response(DiscordGuildPolicySerializer(page, many=True).data)


class GuildPolicyDetailApi(ApiView):
    required_scopes = {"GET": MANAGE, "PUT": MANAGE, "PATCH": MANAGE, "DELETE": MANAGE}

    @extend_schema(
        operation_id="discord_guild_policies_retrieve",
        parameters=[APP_ID, GUILD_ID],
        responses={200: DiscordGuildPolicySerializer, **error_responses(404)},
    )
    def get(self, request: Request, app_id: str, guild_id: str) -> Response:
        policy = selectors.guild_policy_get(
            tenant=request_tenant(request), public_id=app_id, guild_id=guild_id
        )
        return Response(DiscordGuildPolicySerializer(policy).data)

    @extend_schema(
        operation_id="discord_guild_policies_put",
        parameters=[APP_ID, GUILD_ID],
        request=DiscordGuildPolicyPutSerializer,
        responses={
            200: OpenApiResponse(DiscordGuildPolicySerializer, description="Replaced."),
            201: OpenApiResponse(DiscordGuildPolicySerializer, description="Created."),
            **error_responses(404, 413, 415),
        },
    )
    def put(self, request: Request, app_id: str, guild_id: str) -> Response:
        """Create the guild's policy, or replace it whole: a field not given takes its default
        (no limit)."""
        payload = DiscordGuildPolicyPutSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        policy, created = guild_policy_put(
            tenant=request_tenant(request),
            public_id=app_id,
            guild_id=guild_id,
            **payload.validated_data,
        )
        return Response(
            DiscordGuildPolicySerializer(policy).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        operation_id="discord_guild_policies_update",
        parameters=[APP_ID, GUILD_ID],
        request=DiscordGuildPolicyUpdateSerializer,
        responses={200: DiscordGuildPolicySerializer, **error_responses(404, 413, 415)},
    )
    def patch(self, request: Request, app_id: str, guild_id: str) -> Response:
        """Change the fields given; the others stay. A guild without a policy is a 404."""
        payload = DiscordGuildPolicyUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        policy = guild_policy_update(
            tenant=request_tenant(request),
            public_id=app_id,
            guild_id=guild_id,
            **payload.validated_data,
        )
        return Response(DiscordGuildPolicySerializer(policy).data)

    @extend_schema(
        operation_id="discord_guild_policies_destroy",
        parameters=[APP_ID, GUILD_ID],
        responses={204: OpenApiResponse(description="Deleted."), **error_responses(404)},
    )
    def delete(self, request: Request, app_id: str, guild_id: str) -> Response:
        guild_policy_delete(tenant=request_tenant(request), public_id=app_id, guild_id=guild_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


@method_decorator(csrf_exempt, name="dispatch")
class InteractionsApi(View):
    """Discord's interactions for one application (its Interactions Endpoint URL): no API key;
    the Ed25519 signature says who sent it. Not in the OpenAPI schema: Discord is its client."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest, application_id: str) -> JsonResponse:
        try:
            body = request.body
        except RequestDataTooBig:
            too_large = error_body("payload_too_large", "The request body is too large.")
            return JsonResponse(too_large, status=413)
        try:
            answer = interaction_receive(
                application_id=application_id,
                body=body,
                signature=request.headers.get("X-Signature-Ed25519", ""),
                timestamp=request.headers.get("X-Signature-Timestamp", ""),
            )
        except ServiceError as error:
            refused = error_body(error.code, error.message, error.details or None)
            return JsonResponse(refused, status=error.status_code)
        return JsonResponse(answer)

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        """In the API's error shape, as DRF's views answer it (Django's own has no body)."""
        text = f'Method "{request.method}" not allowed.'
        response = JsonResponse(error_body("method_not_allowed", text), status=405)
        response["Allow"] = "POST"
        return response
