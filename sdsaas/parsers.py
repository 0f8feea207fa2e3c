from __future__ import annotations

import io
from collections.abc import Mapping
from typing import IO, Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from sdsaas.errors import PayloadTooLarge

# The largest job input, every character written as a `\u` escape, stays under 64 KiB; this leaves
# room for whitespace. DRF's parser would read a body of any size into memory.
MAX_JSON_BODY_BYTES = 256 * 1024


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with a size cap (413) and deeply nested bodies a 400 instead of a 500."""

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        body = stream.read(MAX_JSON_BODY_BYTES + 1)
        if len(body) > MAX_JSON_BODY_BYTES:
            raise PayloadTooLarge(f"The JSON body is over {MAX_JSON_BODY_BYTES} bytes.")
        try:
            return super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
