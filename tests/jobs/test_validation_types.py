"""Job input of the wrong JSON type: a 400 naming the field, never a 500 nor a silent coercion."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.validation import (
    HTTPS_IMAGE,
    assert_400_naming,
    nothing_created,
    post_raw,
    submit,
)

# The fixtures `tenant`, `model`, `client` and `loras` of the validation tests:
from tests.support.validation import validation_client as validation_client
from tests.support.validation import validation_loras as validation_loras
from tests.support.validation import validation_model as validation_model
from tests.support.validation import validation_tenant as validation_tenant

pytestmark = pytest.mark.django_db


WRONG_TYPES = [
    ("model", None),
    ("model", ["tiny"]),
    ("model", {"slug": "tiny"}),
    ("model", "not a slug!"),
    ("prompt", None),
    ("prompt", ["a", "b"]),
    ("prompt", {"text": "a"}),
    ("prompt", True),
    ("prompt", "a \x00 null"),
    ("prompt", "a \ud800 lone surrogate"),
    ("negative_prompt", None),
    ("negative_prompt", ["a"]),
    ("width", "wide"),
    ("width", "512px"),
    ("width", None),
    ("width", [512]),
    ("width", {"px": 512}),
    ("width", 512.5),
    ("width", True),
    ("width", ""),
    ("height", "tall"),
    ("height", None),
    ("steps", "many"),
    ("steps", None),
    ("steps", [20]),
    ("steps", 20.5),
    ("steps", True),
    ("guidance", "high"),
    ("guidance", None),
    ("guidance", [7]),
    ("guidance", {"v": 7}),
    ("guidance", True),
    ("guidance", "nan"),
    ("guidance", "inf"),
    ("num_outputs", "two"),
    ("num_outputs", None),
    ("num_outputs", True),
    ("seed", "lucky"),
    ("seed", None),
    ("seed", 1.5),
    ("seed", [1]),
    ("seed", False),
    ("seed", "1" * 1001),
    ("scheduler", None),
    ("scheduler", 1),
    ("scheduler", ["euler"]),
    ("scheduler", "\ud800"),
    ("output_format", None),
    ("output_format", ["png"]),
    ("output_format", "png\ud800"),
    ("image", None),
    ("image", [HTTPS_IMAGE]),
    ("image", {"url": HTTPS_IMAGE}),
    ("image", 5),
    ("loras", None),
    ("loras", "style-0"),
    ("loras", {"slug": "style-0"}),
    ("loras", 1),
    ("loras[0]", ["style-0"]),
    ("loras[0]", [None]),
    ("loras[0]", [1]),
    ("loras[0].slug", [{"slug": None}]),
    ("loras[0].slug", [{"slug": ["style-0"]}]),
    ("loras[0].weight", [{"slug": "style-0", "weight": "heavy"}]),
    ("loras[0].weight", [{"slug": "style-0", "weight": None}]),
    ("loras[0].weight", [{"slug": "style-0", "weight": True}]),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES, ids=lambda v: repr(v)[:20])
def test_wrong_types_are_400_naming_the_field(
    client: APIClient, loras: list[str], field: str, value: Any
) -> None:
    # when a field has a value of the wrong type (sent as raw JSON, as a client would)
    top = re.split(r"[.\[]", field)[0]
    body = json.dumps({"model": "tiny", "prompt": "a paper boat", top: value})
    response = post_raw(client, body, "application/json")
    # then it is a 400 naming the field, and nothing was created
    assert_400_naming(response, field)
    assert nothing_created()


# What DRF's fields would have read as another type: a JSON API takes each field's own type only.
COERCIBLE = [
    ("width", "64", "an integer", "a string"),
    ("height", "512", "an integer", "a string"),
    ("steps", "20", "an integer", "a string"),
    ("num_outputs", "1", "an integer", "a string"),
    ("seed", "7", "an integer", "a string"),
    ("width", 512.0, "an integer", "a number"),
    ("seed", 7.0, "an integer", "a number"),
    ("steps", False, "an integer", "a boolean"),
    ("guidance", "7.5", "a number", "a string"),
    ("guidance", False, "a number", "a boolean"),
    ("prompt", 5, "a string", "an integer"),
    ("prompt", 5.5, "a string", "a number"),
    ("negative_prompt", 0, "a string", "an integer"),
    ("model", 7, "a string", "an integer"),
    ("scheduler", 1, "a string", "an integer"),
    ("output_format", True, "a string", "a boolean"),
    ("image", 1, "a string", "an integer"),
]


@pytest.mark.parametrize(("field", "value", "expected", "given"), COERCIBLE, ids=repr)
def test_a_value_of_another_json_type_is_400_naming_the_field(
    client: APIClient, field: str, value: Any, expected: str, given: str
) -> None:
    # when a field holds a value that DRF would coerce (`"64"` to 64, `5` to "5")
    body = json.dumps({"model": "tiny", "prompt": "a paper boat", field: value})
    response = post_raw(client, body, "application/json")
    # then it is refused, naming the field and both types, and nothing was created
    assert_400_naming(response, field)
    assert response.json()["error"]["message"] == f"{field}: Must be {expected}, not {given}."
    assert nothing_created()


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("strength", {"image": HTTPS_IMAGE, "strength": "0.5"}),
        ("loras[0].weight", {"loras": [{"slug": "style-0", "weight": "0.5"}]}),
        ("loras[0].slug", {"loras": [{"slug": 5}]}),
    ],
    ids=["strength", "lora-weight", "lora-slug"],
)
def test_nested_and_img2img_fields_take_their_own_type_only(
    client: APIClient, loras: list[str], field: str, fields: dict[str, Any]
) -> None:
    response = submit(client, **fields)
    assert_400_naming(response, field)
    assert "Must be" in response.json()["error"]["message"]
    assert nothing_created()


def test_a_number_beyond_any_float_is_400_not_500(client: APIClient) -> None:
    # given an integer literal too large to convert to a float, where a number is expected
    body = '{"model": "tiny", "prompt": "a paper boat", "guidance": 1' + "0" * 400 + "}"
    client.raise_request_exception = False
    # when it is posted, then it is a 400 naming the field
    assert_400_naming(post_raw(client, body, "application/json"), "guidance")
    assert nothing_created()


@pytest.mark.parametrize("name", ["\ud800", "step\udfff"], ids=["surrogate", "with-surrogate"])
def test_unknown_field_named_with_a_lone_surrogate_is_400(client: APIClient, name: str) -> None:
    # when an unknown field's name holds a lone surrogate (valid JSON, not encodable as UTF-8)
    body = json.dumps({"model": "tiny", "prompt": "a paper boat", name: 1})
    response = post_raw(client, body, "application/json")
    # then it is a 400 that renders the name escaped, not a 500
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"] == f"{name!a}"[1:-1] + ": Unknown field."
    assert nothing_created()
