"""Domain errors, and the API's answers to them in the one JSON error shape
(sdsaas/error_shape.py)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

from sdsaas.error_shape import error_body


class ServiceError(Exception):
    """Raised by services for a request that cannot be served; carries its HTTP status."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    code: str = "invalid_request"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidInput(ServiceError):
    code = "invalid_input"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", details={field: [message]})


class NotFound(ServiceError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Conflict(ServiceError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"


class IdempotencyKeyReused(ServiceError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "idempotency_key_reused"


class QuotaExceeded(ServiceError):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "quota_exceeded"


class RateLimited(ServiceError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after


_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.ParseError: "malformed_request",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "invalid_input",
}


def validation_message(detail: Any, path: str = "") -> str:
    """The first error, named by its field path: `width: ...`, `loras[1].weight: ...`.

    Items of a list are named by their index, the way services name them (`loras[1].slug`):
    DRF reports a list's errors as a dict keyed by index, or as a list with `{}` for valid items.
    """
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                name = path or "input"
            elif path and (isinstance(key, int) or str(key).isdigit()):
                name = f"{path}[{key}]"
            else:
                name = f"{path}.{key}" if path else str(key)
            return validation_message(value, name)
    if isinstance(detail, list) and detail:
        for index, item in enumerate(detail):
            if not isinstance(item, dict | list):
                return f"{path or 'input'}: {item}"
            if item:
                return validation_message(item, f"{path}[{index}]" if path else "input")
    return f"{path or 'input'}: {detail}"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    # Imported here: DRF's views import the authentication classes, which import this module.
    from rest_framework.views import exception_handler

    if isinstance(exc, ServiceError):
        own = Response(error_body(exc.code, exc.message, exc.details), exc.status_code)
        if isinstance(exc, RateLimited):
            own["Retry-After"] = str(exc.retry_after)
        return own
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body("payload_too_large", "The request body is too large."),
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    shaped = exception_handler(exc, context)
    if shaped is None or not isinstance(exc, exceptions.APIException):
        return shaped  # not ours to shape: a 500, which is a bug
    response: Response = shaped
    code = next((c for t, c in _DRF_CODES.items() if isinstance(exc, t)), "error")
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body(code, validation_message(exc.detail), exc.detail)
    else:
        response.data = error_body(code, str(exc.detail))
    return response


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    # Django's own 400s: a Host header not in ALLOWED_HOSTS, a request it cannot read.
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)


def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("internal_error", "Internal server error."), status=500)
