"""The API's WSGI application (`gunicorn ... sdsaas.wsgi`): Django's, reading chunked bodies too."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from sdsaas.error_shape import error_body

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsaas.settings")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ChunkedBodies:
    """Hands Django a request body sent with `Transfer-Encoding: chunked` (no Content-Length).

    Django reads a body by its Content-Length alone, so such a body read as empty: a PUT of a
    guild policy set every field to its default, a PATCH changed nothing and answered 200. gunicorn
    passes the body dechunked and says that its stream ends (`wsgi.input_terminated`): the body is
    read here, up to DATA_UPLOAD_MAX_MEMORY_SIZE (past it, a 413), and handed on with its length.
    Behind a server that cannot end the stream, such a request is refused with a 411.
    """

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH"):
            if not environ.get("wsgi.input_terminated"):
                return _refuse(
                    start_response,
                    "411 Length Required",
                    "length_required",
                    "Send the request body with a Content-Length.",
                )
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            body = environ["wsgi.input"].read(limit + 1)
            if len(body) > limit:
                return _refuse(
                    start_response,
                    "413 Request Entity Too Large",
                    "payload_too_large",
                    "The request body is too large.",
                )
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)


def _refuse(start_response: StartResponse, status: str, code: str, message: str) -> list[bytes]:
    body = json.dumps(error_body(code, message)).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


application = ChunkedBodies(get_wsgi_application())
