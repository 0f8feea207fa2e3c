"""The edge of API v1 that every view shares: strict JSON fields, query parameters validated like
bodies, the API key in the schema, and the errors each operation documents."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from django.core.validators import RegexValidator
from django.http import QueryDict
from django.urls import register_converter
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_bearer_security_scheme_object, get_doc
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.views import APIView

from sdsaas.errors import InvalidInput

# --- bodies: JSON types as sent -----------------------------------------------------------------

_JSON_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


class JsonTypedField(serializers.Field):
    """A body field that takes only the JSON type it stands for (mixed into DRF's fields).

    DRF coerces: `"64"` reads as 64, `5` as `"5"`, `"0.5"` as 0.5. A JSON API that accepts these
    hides client bugs (a form value sent unconverted) and breaks the types its schema promises.
    """

    # Exact types: `type(True) is bool`, so a boolean is never taken for an integer.
    json_types: ClassVar[tuple[type, ...]]
    json_type_name: ClassVar[str]
    default_error_messages = {"json_type": "Must be {expected}, not {given}."}

    def to_internal_value(self, data: Any) -> Any:
        if type(data) not in self.json_types:
            given = _JSON_TYPE_NAMES.get(type(data), type(data).__name__)
            self.fail("json_type", expected=self.json_type_name, given=given)
        return super().to_internal_value(data)


class StrictCharField(JsonTypedField, serializers.CharField):
    """A string, taken as sent: DRF would strip it first, passing `" tiny"` as a slug."""

    json_types = (str,)
    json_type_name = "a string"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, **kwargs)


class StrictChoiceField(JsonTypedField, serializers.ChoiceField):
    json_types = (str,)
    json_type_name = "a string"


class StrictIntegerField(JsonTypedField, serializers.IntegerField):
    json_types = (int,)
    json_type_name = "an integer"


class NumberField(JsonTypedField, serializers.FloatField):
    json_types = (int, float)
    json_type_name = "a number"


# `\A…\Z`, not `^…$`: in Python `$` also matches before a final newline, so "tiny\n" would pass.
# drf-spectacular writes these anchors as `^…$` in the schema, where they mean the same thing.
SLUG = RegexValidator(r"\A[-a-zA-Z0-9_]+\Z", "Must be a slug: letters, digits, '-' and '_'.")


# Visible ASCII only: a URL is ASCII (RFC 3986; anything else is percent-encoded), and a space
# or a control character would otherwise be stored, shown and sent as given.
URL_CHARS = RegexValidator(
    r"\A[!-~]+\Z", "Must be a URL of visible ASCII characters; percent-encode any others."
)


class StrictSlugField(StrictCharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators.append(SLUG)


class StrictSerializer(serializers.Serializer):
    """Rejects unknown fields: a typo (`step` for `steps`) is a 400, not a silent default."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class StrictSerializerSchema(OpenApiSerializerExtension):
    """Says in the schema what StrictSerializer enforces: no properties beyond the declared ones."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: AutoSchema, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_serializer(
            self.target, direction, bypass_extensions=True
        )
        return {**schema, "additionalProperties": False}


# --- query parameters --------------------------------------------------------------------------


QUERY_RULE = (
    "Query parameters this operation does not list are refused with a 400, as are empty or "
    "repeated ones."
)


class QuerySerializer(serializers.Serializer):
    """The query parameters of one operation: none, unless a subclass declares them as fields.

    DRF reads a query like an HTML form, where an empty field counts as absent and the last of
    repeated fields wins: `?status=` would list every job and `?status=queued&status=failed` the
    failed ones. Here both are 400s, as is a parameter the operation does not take.
    """

    def to_internal_value(self, data: Any) -> Any:
        assert isinstance(data, QueryDict), "built from request.query_params"
        errors = {}
        for name, values in sorted(data.lists()):
            if name not in self.fields:
                errors[name] = ["Unknown query parameter."]
            elif len(values) > 1:
                errors[name] = ["Given more than once."]
        if errors:
            raise serializers.ValidationError(errors)
        return super().to_internal_value(data.dict())


class ApiSchema(AutoSchema):
    """Documents each operation's query parameters from the view's `query_serializers`."""

    # drf-spectacular's signature, which differs from DRF's ViewInspector it derives from.
    def get_description(self) -> str:  # type: ignore[override]
        # The handler's docstring, not the view's: every view would inherit ApiView's.
        handler = getattr(self.view, self.method.lower(), None)
        return f"{get_doc(handler)}\n\n{QUERY_RULE}".strip()

    def get_override_parameters(self) -> list[Any]:
        assert isinstance(self.view, ApiView), "the schema of ApiView's subclasses"
        serializer = self.view.query_serializers.get(self.method.upper())
        return [serializer] if serializer is not None else []


class ApiView(APIView):
    """The base of API v1's views: an operation's query parameters are validated like its body."""

    schema = ApiSchema()
    # The query parameters each method takes; a method not listed takes none.
    query_serializers: ClassVar[dict[str, type[QuerySerializer]]] = {}
    query: dict[str, Any]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # the key and its scope first: 401/403, then 400
        method = (request.method or "").upper()
        if not hasattr(self, method.lower()):
            return  # a method the view does not have is a 405, whatever its query
        serializer = self.query_serializers.get(method)
        if serializer is None and not request.query_params:
            self.query = {}  # what validating nothing against no fields gives, on every poll
            return
        query = (serializer or QuerySerializer)(data=request.query_params)
        query.is_valid(raise_exception=True)
        self.query = dict(query.validated_data)


# --- authentication ----------------------------------------------------------------------------


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents `Authorization: Bearer sk_live_…` in the schema (registered on import)."""

    # By name: the wiring documents the tenants' authentication without importing it.
    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return build_bearer_security_scheme_object(
            header_name="Authorization", token_prefix="Bearer", bearer_format="sk_live_…"
        )


# --- documented errors -------------------------------------------------------------------------

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
_ERRORS = {
    400: "Invalid input, named in `details`: a body field, a query parameter or a header. Unknown "
    "body fields and unknown, empty or repeated query parameters are refused, as is a request "
    "the HTTP server cannot parse.",
    401: "No API key, or an invalid, revoked or suspended one.",
    402: "No monthly credits left.",
    403: "The API key lacks the scope this operation needs.",
    404: "No such object; another tenant's object is a 404 too.",
    406: "The `Accept` header allows no JSON.",
    409: "The job is already final, or a request with this `Idempotency-Key` is still running.",
    413: "The request body is too large.",
    414: "The request line (method, path and query) is too long; answered by the HTTP server.",
    415: "The body has a media type this operation does not take.",
    422: "This `Idempotency-Key` came with another request body within 24 hours.",
    429: "Too many write requests; `Retry-After` says how many seconds to wait.",
    431: "A header is too large, or there are too many; answered by the HTTP server.",
}
# Any operation can meet these: a malformed request or query (400), no key or scope (401, 403), an
# Accept without JSON (406), and the HTTP server's limits on the request line and headers.
_EVERY_OPERATION = (400, 401, 403, 406, 414, 431)


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """The documented error answers of an operation: `statuses` and those any operation has."""
    return {
        status: OpenApiResponse(ERROR, description=_ERRORS[status])
        for status in sorted({*_EVERY_OPERATION, *statuses})
    }


class NewestFirstPagination(CursorPagination):
    """Newest first, `page_size` at a time: the validated `limit`, not a second reading of it."""

    ordering = "-id"

    def __init__(self, *, page_size: int) -> None:
        self.page_size = page_size

    def decode_cursor(self, request: Request) -> Cursor | None:
        # DRF answers a cursor it cannot read with a 404, and hands one it can read but never
        # wrote (`p=abc`, `p=99…9`) to the query, where it is a 500. Ours hold an id.
        invalid = InvalidInput("cursor", "is not the `next` or `previous` link of a page")
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise invalid from None
        position = cursor.position if cursor is not None else None
        if position is not None and not re.fullmatch(r"[0-9]{1,18}", str(position)):
            raise invalid
        return cursor


def page_schema(name: str, item: serializers.Serializer) -> serializers.Serializer:
    """The schema of a NewestFirstPagination page of `item` (a `many=True` serializer)."""
    return inline_serializer(
        name,
        {
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item,
        },
    )


class PublicIdConverter:
    """A path id as the models make them (`job_…`, `whe_…`, `msg_…`). Any other segment is the
    catch-all 404 before any query: a NUL byte, which PostgreSQL refuses in a query, was a 500."""

    regex = "[0-9A-Za-z_]{1,32}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(PublicIdConverter, "public_id")
