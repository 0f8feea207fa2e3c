"""The one JSON error shape of every HTTP answer the project makes:

{"error": {"code": "...", "message": "...", "details": {...}}}

Free of Django REST framework (absent from the GPU image), so that a worker's operators'
endpoints (sdsaas/worker_ops.py) answer in it too; the API's handlers are in sdsaas/errors.py.
"""

from __future__ import annotations

from typing import Any


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return _encodable({"error": {"code": code, "message": message, "details": details or {}}})


def _encodable(value: Any) -> Any:
    """`value` with lone surrogates escaped, so that it can be rendered as UTF-8 JSON.

    Errors echo client input (an unknown field's name, an invalid choice); JSON may carry a lone
    surrogate (`"\\ud800"`), which no UTF-8 encoder accepts: rendering the 400 would be a 500.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    return value
