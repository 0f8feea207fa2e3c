"""DRF authentication by `Authorization: Bearer sk_live_…` and the per-view scope check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from sdsaas import logs
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_authenticate

if TYPE_CHECKING:  # DRF's views import this module through the authentication setting
    from rest_framework.views import APIView


@dataclass(frozen=True)
class TenantPrincipal:
    """`request.user` for API calls: the tenant resolved once at the edge."""

    tenant: Tenant
    is_authenticated: bool = True


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[TenantPrincipal, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not token.strip():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        key = api_key_authenticate(plaintext=token.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or suspended API key.")
        logs.bind(tenant_id=key.tenant_id)
        return TenantPrincipal(tenant=key.tenant), key

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="sdsaas"'


class HasScope(permissions.BasePermission):
    """Views declare `required_scopes = {"GET": "jobs:read", "POST": "jobs:write"}`."""

    message = "This API key lacks the scope this request needs."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not isinstance(request.auth, ApiKey):
            raise exceptions.NotAuthenticated("Send 'Authorization: Bearer <api key>'.")
        method = (request.method or "").upper()
        if not hasattr(view, method.lower()):
            return True  # the view answers 405 for a method it does not have
        if method == "OPTIONS":
            return True  # the view's description (DRF's metadata): nothing of the tenant's
        # A HEAD is answered by the view's GET, and needs what that needs.
        required = getattr(view, "required_scopes", {}).get("GET" if method == "HEAD" else method)
        if required is None:
            return False
        if required in request.auth.scopes:
            return True
        self.message = f"This API key lacks the '{required}' scope."
        return False


def request_tenant(request: Request) -> Tenant:
    user = request.user
    assert isinstance(user, TenantPrincipal)
    return user.tenant
