"""Request bodies of POST /v1/jobs that are no JSON object of job input: refused in the one
error shape, as 4xx, before any field is read."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from tests.support.validation import nothing_created, post_raw

# The fixtures `tenant`, `model`, `client` and `loras` of the validation tests:
from tests.support.validation import validation_client as validation_client
from tests.support.validation import validation_loras as validation_loras
from tests.support.validation import validation_model as validation_model
from tests.support.validation import validation_tenant as validation_tenant

pytestmark = pytest.mark.django_db


BODIES = [
    ("[]", "application/json", 400, "invalid_input"),
    ('[{"model": "tiny", "prompt": "a paper boat"}]', "application/json", 400, "invalid_input"),
    ('"a paper boat"', "application/json", 400, "invalid_input"),
    ("42", "application/json", 400, "invalid_input"),
    ("true", "application/json", 400, "invalid_input"),
    ("null", "application/json", 400, "invalid_input"),
    ("", "application/json", 400, "invalid_input"),
    ("{}", "application/json", 400, "invalid_input"),
    ('{"model": "tiny", "prompt": ', "application/json", 400, "malformed_request"),
    ("{'model': 'tiny', 'prompt': 'x'}", "application/json", 400, "malformed_request"),
    ('{"model": "tiny", "prompt": "x", "guidance": NaN}', "application/json", 400, None),
    ('{"model": "tiny", "prompt": "x", "guidance": Infinity}', "application/json", 400, None),
    (
        '{"model": "tiny", "prompt": "x", "seed": 1' + "0" * 5000 + "}",
        "application/json",
        400,
        None,
    ),
    (b'{"model": "tiny", "prompt": "\xff\xfe"}', "application/json", 400, "malformed_request"),
    ("model=tiny&prompt=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ('{"model": "tiny", "prompt": "x"}', "text/plain", 415, "unsupported_media_type"),
    ("<job><model>tiny</model></job>", "application/xml", 415, "unsupported_media_type"),
    ('{"model": "tiny", "prompt": "x"}', "application/yaml", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    BODIES,
    ids=[f"{ct.split('/')[1]}:{body[:16]!r}" for body, ct, _, _ in BODIES],
)
def test_bodies_that_are_no_json_object_are_refused_in_the_error_shape(
    client: APIClient, body: str | bytes, content_type: str, status: int, code: str | None
) -> None:
    # when the body is not a JSON object of job input
    response = post_raw(client, body, content_type)
    # then it is a 4xx in the one error shape, not a 500, and nothing was created
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    assert nothing_created()


def test_deeply_nested_json_is_400_not_500(client: APIClient) -> None:
    # given a 4 kB body of nested arrays, far below the upload cap
    body = "[" * 2000 + "]" * 2000
    client.raise_request_exception = False
    # when it is posted
    response = post_raw(client, body, "application/json")
    # then it is refused as malformed, like any other unparsable body
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "malformed_request"


def test_a_json_body_over_256_kib_is_413_before_it_is_parsed(client: APIClient) -> None:
    # given a body of valid JSON over the cap (the largest valid job input is far smaller)
    body = json.dumps({"model": "tiny", "prompt": "a paper boat", "negative_prompt": "x" * 2**18})
    # when it is posted, then it is refused as too large, not read and checked field by field
    response = post_raw(client, body, "application/json")
    assert response.status_code == 413, response.content
    assert response.json()["error"]["code"] == "payload_too_large"
    assert nothing_created()


def test_the_largest_job_input_fits_under_the_body_cap(client: APIClient, loras: list[str]) -> None:
    # given every string field at its longest, each character written as a surrogate-pair escape
    longest = {
        "prompt": "\U0001f98a" * 2000,
        "negative_prompt": "\U0001f98a" * 2000,
        "loras": [{"slug": slug, "weight": -1.234567890123} for slug in loras[:5]],
        "image": "https://images.example.com/" + "a" * (2048 - 27),
        "strength": 0.123456789012345,
    }
    body = json.dumps({"model": "tiny", **longest}, indent=2)
    # when it is posted, then it is accepted
    assert post_raw(client, body, "application/json").status_code == 202


def test_job_body_as_multipart_form_is_415(client: APIClient, loras: list[str]) -> None:
    # when job input is sent as a multipart form
    form = {"model": "tiny", "prompt": "a paper boat", "loras": loras[0]}
    response = client.post("/v1/jobs", form, format="multipart")
    # then it is refused as an unsupported media type, like a urlencoded form
    assert response.status_code == 415, response.content
    assert nothing_created()
