"""Encoding: the version every wire dict carries, and decoding that ignores newer fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

CONTRACT_VERSION = 2


def known_fields(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` that `cls` has a field for: newer fields are dropped, not refused."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {name: value for name, value in data.items() if name in names}


def wire_dict(value: Any) -> dict[str, Any]:
    return {"v": CONTRACT_VERSION, **dataclasses.asdict(value)}


def version_of(data: Mapping[str, Any]) -> int:
    """The contract version of a wire dict's writer (1: written before versioning)."""
    return int(data.get("v", 1))
