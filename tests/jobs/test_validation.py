"""Job input at the edge: every bound is a 400 naming its field; nothing malformed is a 500."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from rest_framework.response import Response
from rest_framework.test import APIClient

from jobs.models import (
    DiffusionModel,
    Family,
    IdempotencyRecord,
    Job,
    JobEvent,
)
from jobs.services.submit import job_submit
from sdsaas.contract import OutputFormat, Scheduler
from tenants.models import CreditPeriod, Tenant
from tests.support.factories import (
    DiffusionModelFactory,
    LoraFactory,
    PlanFactory,
    TenantFactory,
    UploadFactory,
    api_client_for,
)

pytestmark = pytest.mark.django_db

HTTPS_IMAGE = "https://images.example.com/cat.png"
SEED_MAX = 2**32 - 1


@pytest.fixture
def tenant() -> Tenant:
    """A roomy plan, so that only the model's bounds and the static ones apply."""
    plan = PlanFactory(max_steps=150, max_pixels=1024 * 1024, max_concurrent_jobs=2)
    return TenantFactory(plan=plan)  # type: ignore[no-any-return]


@pytest.fixture
def model() -> DiffusionModel:
    return DiffusionModelFactory(  # type: ignore[no-any-return]
        slug="tiny",
        family=Family.SD15,
        min_side=256,
        max_side=1024,
        max_steps=100,
        default_width=512,
        default_height=512,
        default_steps=20,
        default_guidance=7.5,
        default_scheduler="dpmpp_2m",
    )


@pytest.fixture
def client(tenant: Tenant, model: DiffusionModel) -> APIClient:
    return api_client_for(tenant)


def submit(client: APIClient, **fields: Any) -> Response:
    body = {"model": "tiny", "prompt": "a paper boat", **fields}
    return client.post("/v1/jobs", body, format="json")  # type: ignore[no-any-return]


def post_raw(client: APIClient, body: str | bytes, content_type: str) -> Response:
    return client.generic("POST", "/v1/jobs", body, content_type=content_type)  # type: ignore[no-any-return]


def assert_400_naming(response: Response, field: str) -> None:
    """A 400 in the one error shape whose message starts with the field's path."""
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_input", error
    assert error["message"].startswith(f"{field}: "), error
    top = re.split(r"[.\[]", field)[0]
    assert any(key == field or re.split(r"[.\[]", key)[0] == top for key in error["details"]), error


def nothing_created() -> bool:
    return not (
        Job.objects.exists()
        or JobEvent.objects.exists()
        or IdempotencyRecord.objects.exists()
        or CreditPeriod.objects.filter(reserved__gt=0).exists()
    )


# --- bounds: the last value accepted, the first refused -------------------------------------------

ACCEPTED = [
    ("prompt", "p" * 2000),
    ("prompt", " a prompt with spaces kept "),
    ("negative_prompt", "n" * 2000),
    ("negative_prompt", ""),
    ("width", 256),
    ("width", 1024),
    ("width", 520),
    ("height", 256),
    ("height", 1024),
    ("steps", 1),
    ("steps", 100),
    ("guidance", 0),
    ("guidance", 30),
    ("guidance", 12.25),
    ("num_outputs", 1),
    ("num_outputs", 4),
    ("seed", 0),
    ("seed", SEED_MAX),
    *[("scheduler", name.value) for name in Scheduler],
    *[("output_format", name.value) for name in OutputFormat],
]


@pytest.mark.parametrize(("field", "value"), ACCEPTED, ids=lambda v: str(v)[:20])
def test_values_at_the_bounds_are_accepted_as_given(
    client: APIClient, field: str, value: Any
) -> None:
    # when a job is submitted with a value at the edge of its range
    response = submit(client, **{field: value})
    # then it is accepted and the value is used as given (0 is not replaced by a default)
    assert response.status_code == 202, response.content
    assert response.json()["input"][field] == value
    assert Job.objects.get().input[field] == value


REFUSED = [
    ("prompt", "p" * 2001),
    ("prompt", ""),
    ("negative_prompt", "n" * 2001),
    ("width", 252),  # not a multiple of 8
    ("width", 516),
    ("width", 248),  # below the model's min_side
    ("width", 1032),  # above the model's max_side
    ("width", 0),
    ("width", -512),
    ("width", 8200),
    ("height", 260),
    ("height", 248),
    ("height", 1032),
    ("height", 0),
    ("steps", 0),
    ("steps", -1),
    ("steps", 101),  # above the model's max_steps
    ("steps", 151),  # above the ceiling
    ("guidance", -0.01),
    ("guidance", 30.01),
    ("num_outputs", 0),
    ("num_outputs", 5),
    ("num_outputs", -1),
    ("seed", -1),
    ("seed", SEED_MAX + 1),
    ("seed", 10**40),
    ("scheduler", "karras"),
    ("scheduler", "DDIM"),
    ("scheduler", ""),
    ("scheduler", "euler a"),
    ("output_format", "gif"),
    ("output_format", "PNG"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=lambda v: str(v)[:20])
def test_values_past_the_bounds_are_400_naming_the_field(
    client: APIClient, field: str, value: Any
) -> None:
    # when a job is submitted with a value just outside its range
    response = submit(client, **{field: value})
    # then it is refused with a 400 that names the field, and nothing was created
    assert_400_naming(response, field)
    assert nothing_created()


@pytest.mark.parametrize(
    ("plan_steps", "model_steps", "ok", "refused"),
    [(40, 100, 40, 41), (150, 60, 60, 61), (150, 150, 150, 151), (1, 150, 1, 2)],
    ids=["plan-caps", "model-caps", "ceiling", "plan-of-one"],
)
def test_steps_are_capped_by_the_model_the_plan_and_150(
    plan_steps: int, model_steps: int, ok: int, refused: int
) -> None:
    # given a plan and a model, each with its own max_steps
    tenant = TenantFactory(plan=PlanFactory(max_steps=plan_steps))
    DiffusionModelFactory(slug="tiny", max_steps=model_steps, default_steps=1)
    client = api_client_for(tenant)
    # when steps are at the lower of the two caps, and one above it
    accepted = submit(client, steps=ok)
    over = submit(client, steps=refused)
    # then the first is accepted and the second is a 400 naming steps
    assert accepted.status_code == 202, accepted.content
    assert accepted.json()["input"]["steps"] == ok
    assert_400_naming(over, "steps")
    assert Job.objects.count() == 1


def test_the_plans_max_pixels_caps_width_times_height() -> None:
    # given a plan capped at 512x768 pixels
    tenant = TenantFactory(plan=PlanFactory(max_pixels=512 * 768))
    DiffusionModelFactory(slug="tiny", min_side=64, max_side=1024)
    client = api_client_for(tenant)
    # when images of exactly that many pixels, and of a little more, are asked for
    exact = submit(client, width=768, height=512)
    over = [
        submit(client, width=520, height=768),
        submit(client, width=768, height=520),
        submit(client, width=1024, height=1024),
    ]
    # then the first is accepted and the others are 400s naming the size
    assert exact.status_code == 202, exact.content
    for response in over:
        assert_400_naming(response, "width")
        assert "pixels" in response.json()["error"]["message"]
    assert Job.objects.count() == 1


def test_the_models_default_size_must_fit_the_plan() -> None:
    # given a plan that allows fewer pixels than the model's default size
    tenant = TenantFactory(plan=PlanFactory(max_pixels=256 * 256))
    DiffusionModelFactory(slug="tiny", default_width=512, default_height=512, min_side=64)
    client = api_client_for(tenant)
    # when a job relies on the default size, or asks for one that fits
    defaulted = submit(client)
    small = submit(client, width=256, height=256)
    # then the default is checked like a given size
    assert_400_naming(defaulted, "width")
    assert small.status_code == 202, small.content


# --- model, LoRAs, image -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slug", ["no-such-model", "off", "Tiny", "tiny-"], ids=["unknown", "disabled", "case", "typo"]
)
def test_unknown_or_disabled_model_is_400_naming_model(client: APIClient, slug: str) -> None:
    # given a disabled model besides the enabled one
    DiffusionModelFactory(slug="off", enabled=False)
    # when a job names a model the tenant cannot use
    response = submit(client, model=slug)
    # then it is a 400 naming model
    assert_400_naming(response, "model")
    assert nothing_created()


@pytest.fixture
def loras() -> list[str]:
    return [LoraFactory(slug=f"style-{i}", family=Family.SD15).slug for i in range(6)]


def test_five_loras_are_accepted_with_their_default_or_given_weights(
    client: APIClient, loras: list[str]
) -> None:
    # when a job uses five LoRAs, at the weight bounds and with the default weight
    requested = [
        {"slug": loras[0], "weight": -2},
        {"slug": loras[1], "weight": 2},
        {"slug": loras[2], "weight": 0},
        {"slug": loras[3]},
        {"slug": loras[4], "weight": 0.35},
    ]
    response = submit(client, loras=requested)
    # then all five are used in order, a missing weight taking the LoRA's default (1.0)
    assert response.status_code == 202, response.content
    assert response.json()["input"]["loras"] == [
        {"slug": loras[0], "weight": -2},
        {"slug": loras[1], "weight": 2},
        {"slug": loras[2], "weight": 0},
        {"slug": loras[3], "weight": 1.0},
        {"slug": loras[4], "weight": 0.35},
    ]


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("loras", lambda s: [{"slug": slug} for slug in s]),
        ("loras", lambda s: [{"slug": s[0]}, {"slug": s[0]}]),
        ("loras[0].weight", lambda s: [{"slug": s[0], "weight": 2.01}]),
        ("loras[0].weight", lambda s: [{"slug": s[0], "weight": -2.01}]),
        ("loras[1].weight", lambda s: [{"slug": s[0]}, {"slug": s[1], "weight": 3}]),
        ("loras[0].slug", lambda s: [{"slug": "no-such-lora"}]),
        ("loras[1].slug", lambda s: [{"slug": s[0]}, {"slug": "no-such-lora"}]),
        ("loras[0].slug", lambda s: [{"slug": "xl-style"}]),
        ("loras[0].slug", lambda s: [{"slug": "off-style"}]),
        ("loras[0].slug", lambda s: [{"weight": 1}]),
        ("loras[0].wieght", lambda s: [{"slug": s[0], "wieght": 1}]),
        ("loras[2].scale", lambda s: [{"slug": s[0]}, {"slug": s[1]}, {"slug": s[2], "scale": 1}]),
    ],
    ids=[
        "six",
        "duplicate",
        "weight-over",
        "weight-under",
        "second-weight",
        "unknown",
        "second-unknown",
        "other-family",
        "disabled",
        "no-slug",
        "typo-field",
        "third-unknown-field",
    ],
)
def test_bad_loras_are_400_naming_the_lora(
    client: APIClient, loras: list[str], field: str, make: Any
) -> None:
    # given an SDXL LoRA and a disabled one besides the six SD 1.5 LoRAs
    LoraFactory(slug="xl-style", family=Family.SDXL)
    LoraFactory(slug="off-style", enabled=False)
    # when a job asks for LoRAs that break a rule
    response = submit(client, loras=make(loras))
    # then it is a 400 naming the offending LoRA by its index
    assert_400_naming(response, field)
    assert nothing_created()


@pytest.mark.parametrize(("steps", "strength"), [(20, 0), (20, 0.04), (4, 0.2)])
def test_a_strength_that_leaves_no_denoising_step_is_400(
    client: APIClient, steps: int, strength: float
) -> None:
    # img2img runs int(steps x strength) steps: none at all would be an error on the GPU
    response = submit(client, image=HTTPS_IMAGE, steps=steps, strength=strength)
    assert_400_naming(response, "strength")
    assert nothing_created()


def test_image_from_an_own_upload_or_an_https_url_is_img2img(
    client: APIClient, tenant: Tenant
) -> None:
    # given an upload of the tenant's
    upload = UploadFactory(tenant=tenant)
    # when jobs use it, and an https URL with an explicit strength
    by_upload = submit(client, image=upload.public_id)
    by_url = submit(client, image=HTTPS_IMAGE, strength=0.25)
    # then both are img2img; the default strength applies only where none was given
    assert by_upload.status_code == by_url.status_code == 202
    assert (by_upload.json()["kind"], by_url.json()["kind"]) == ("img2img", "img2img")
    assert by_upload.json()["input"]["strength"] == 0.8
    assert by_url.json()["input"]["strength"] == 0.25
    first, second = Job.objects.order_by("id")
    assert (first.init_image_key, first.init_image_url) == (upload.storage_key, "")
    assert (second.init_image_key, second.init_image_url) == ("", HTTPS_IMAGE)


@pytest.mark.parametrize(
    "image",
    [
        "http://images.example.com/cat.png",
        "ftp://images.example.com/cat.png",
        "file:///etc/passwd",
        "/etc/passwd",
        "images.example.com/cat.png",
        "https://",
        "https:///cat.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/cat.png",
        "https://10.1.2.3/cat.png",
        "https://[::1]/cat.png",
        "https://[64:ff9b::a9fe:a9fe]/cat.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "upl_00000000000000000000",
        "upl_",
        "upl_0123456789abcdef012",
        "upl_0123456789ABCDEF0123",
        "",
        "h" * 2049,
        "https://user:secret@images.example.com/cat.png",
        "https://user@images.example.com/cat.png",
        "https://:secret@images.example.com/cat.png",
        "https://images.example.com@169.254.169.254/cat.png",
        "https://images.example.com:99999/cat.png",
        "https://images.example.com:0/cat.png",
        "https://images.example.com:/cat.png",
        "https://[1:2]/cat.png",
        "https://images.example.com/a cat.png",
        "https://images.example.com/cat.png\n",
        "https://bücher.example/cat.png",
        " https://images.example.com/cat.png",
    ],
    ids=lambda v: v[:24] or "empty",
)
def test_image_that_is_no_upload_id_nor_https_url_is_400(client: APIClient, image: str) -> None:
    response = submit(client, image=image)
    assert_400_naming(response, "image")
    assert nothing_created()


@pytest.mark.parametrize(
    "image",
    [
        "https://user:secret@images.example.com/cat.png",
        "https://token@images.example.com/cat.png",
        "https://images.example.com:443@evil.example/cat.png",
    ],
)
def test_image_url_with_user_info_is_400_at_submit(client: APIClient, image: str) -> None:
    # when an img2img URL carries a user name or password (a fetch would send them along)
    response = submit(client, image=image)
    # then it is refused at submit, naming image and why, rather than failing the job later
    assert_400_naming(response, "image")
    assert "user name or password" in response.json()["error"]["message"]
    assert nothing_created()


@pytest.mark.parametrize(
    "image",
    [
        "https://images.example.com",
        "https://images.example.com:8443/cats/1.png?size=large&v=2#top",
        "https://IMAGES.example.com/a%20cat.png",
        "https://93.184.215.14/cat.png",
        "https://[2606:4700:4700::1111]/cat.png",
        "https://images.example.com/@cat.png",
    ],
)
def test_https_urls_of_every_allowed_form_are_accepted(client: APIClient, image: str) -> None:
    response = submit(client, image=image)
    assert response.status_code == 202, response.content
    assert Job.objects.get().init_image_url == image


@pytest.mark.parametrize(
    "fields",
    [
        {"strength": 0.5},
        {"strength": 0},
        {"image": HTTPS_IMAGE, "strength": 1.01},
        {"image": HTTPS_IMAGE, "strength": -0.1},
    ],
    ids=["without-image", "zero-without-image", "over", "under"],
)
def test_bad_strength_is_400_naming_strength(client: APIClient, fields: dict[str, Any]) -> None:
    response = submit(client, **fields)
    assert_400_naming(response, "strength")
    assert nothing_created()


@pytest.mark.parametrize(
    "field", ["step", "cfg_scale", "Prompt", "negativePrompt", "webhook_url", "tenant"]
)
def test_unknown_fields_are_400_naming_them(client: APIClient, field: str) -> None:
    # when a job has a field the API does not know (often a typo of one it does)
    response = submit(client, **{field: 30})
    # then it is refused rather than silently ignored
    assert_400_naming(response, field)
    assert "Unknown field" in response.json()["error"]["message"]
    assert nothing_created()


@pytest.mark.parametrize("field", ["model", "prompt"])
def test_required_fields_are_400_naming_them(client: APIClient, field: str) -> None:
    body = {"model": "tiny", "prompt": "a paper boat"}
    del body[field]
    response = client.post("/v1/jobs", body, format="json")
    assert_400_naming(response, field)
    assert nothing_created()


# --- wrong types: a 400 naming the field, never a 500 ---------------------------------------------

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


# --- a valid request -----------------------------------------------------------------------------


def test_valid_request_is_202_with_the_resolved_input(client: APIClient) -> None:
    # when a job gives only a model and a prompt
    response = submit(client, prompt="a paper boat")
    # then it is accepted with every default applied and a seed chosen
    assert response.status_code == 202, response.content
    job = response.json()
    resolved = job["input"]
    seed = resolved.pop("seed")
    assert isinstance(seed, int)
    assert 0 <= seed <= SEED_MAX
    assert resolved == {
        "prompt": "a paper boat",
        "negative_prompt": "",
        "width": 512,
        "height": 512,
        "steps": 20,
        "guidance": 7.5,
        "scheduler": "dpmpp_2m",
        "num_outputs": 1,
        "loras": [],
        "output_format": "png",
    }
    assert (job["model"], job["kind"]) == ("tiny", "txt2img")
    assert job["id"].startswith("job_")
    assert job["urls"]["get"].endswith(f"/v1/jobs/{job['id']}")
    # and the seed is stored: the job reads back with the same resolved input
    stored = Job.objects.get(public_id=job["id"])
    assert stored.input == {**resolved, "seed": seed}
    assert client.get(f"/v1/jobs/{job['id']}").json()["input"]["seed"] == seed


def test_every_given_value_is_kept(client: APIClient, loras: list[str]) -> None:
    given = {
        "prompt": "a paper boat",
        "negative_prompt": "blurry",
        "width": 768,
        "height": 320,
        "steps": 42,
        "guidance": 0.0,
        "scheduler": "euler_a",
        "num_outputs": 3,
        "seed": 0,
        "loras": [{"slug": loras[0], "weight": 0.5}],
        "output_format": "webp",
        "image": HTTPS_IMAGE,
        "strength": 0.25,
    }
    response = client.post("/v1/jobs", {"model": "tiny", **given}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["input"] == given
    assert Job.objects.get().input == given
    assert Job.objects.get().credits_reserved == 3


@pytest.mark.parametrize("seed", [0, 1, 1234567, SEED_MAX])
def test_a_given_seed_is_used_identically(client: APIClient, seed: int) -> None:
    # when two jobs give the same seed
    first = submit(client, seed=seed)
    second = submit(client, seed=seed)
    # then both record exactly that seed
    assert first.json()["input"]["seed"] == second.json()["input"]["seed"] == seed
    assert [job.input["seed"] for job in Job.objects.all()] == [seed, seed]


def test_a_chosen_seed_is_stored_per_job(client: APIClient) -> None:
    # when several jobs give no seed
    responses = [submit(client) for _ in range(5)]
    # then each has a seed of its own, stored as it was answered
    seeds = [r.json()["input"]["seed"] for r in responses]
    stored = {job.public_id: job.input["seed"] for job in Job.objects.all()}
    assert [stored[r.json()["id"]] for r in responses] == seeds
    assert len(set(seeds)) > 1


# --- a refused request leaves nothing behind ------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"width": 513},
        {"step": 20},
        {"model": "no-such-model"},
        {"steps": 101},
        {"width": 1024, "height": 1032},
        {"image": "upl_00000000000000000000"},
        {"loras": [{"slug": "no-such-lora"}]},
        {"loras": [{"slug": "xl-style"}]},
        {"strength": 0.5},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items())[:30],
)
def test_a_refused_request_creates_nothing_and_does_not_burn_its_idempotency_key(
    client: APIClient, tenant: Tenant, fields: dict[str, Any]
) -> None:
    # given an SDXL LoRA, which the SD 1.5 model cannot use
    LoraFactory(slug="xl-style", family=Family.SDXL)
    # when a refused request is sent with an Idempotency-Key
    body = {"model": "tiny", "prompt": "a paper boat", **fields}
    refused = client.post("/v1/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    # then it created no job, no event, no reservation and no idempotency record
    assert refused.status_code == 400, refused.content
    assert nothing_created()
    assert client.get("/v1/usage").json()["credits"]["reserved"] == 0
    # and the key is still free for the corrected request
    fixed = client.post(
        "/v1/jobs",
        {"model": "tiny", "prompt": "a paper boat"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-1",
    )
    assert fixed.status_code == 202, fixed.content


# --- GET /v1/jobs: filters and cursor pagination --------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("status=QUEUED", "status"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("model=not%20a%20slug", "model"),
        ("state=queued", "state"),
        ("page=2", "page"),
        ("status=", "status"),
        ("model=", "model"),
        ("limit=", "limit"),
        ("cursor=", "cursor"),
        ("status=queued&status=failed", "status"),
        ("limit=10&limit=20", "limit"),
        ("model=tiny%0A", "model"),
        ("status=queued&Status=failed", "Status"),
    ],
)
def test_bad_job_list_filters_are_400_naming_the_parameter(
    client: APIClient, tenant: Tenant, query: str, field: str
) -> None:
    # given a job, so that a filter read as "no filter" would show
    make_jobs(tenant, 1)
    # when the list is asked for with an unknown, empty, repeated or malformed parameter
    response = client.get(f"/v1/jobs?{query}")
    # then it is a 400 naming the parameter, not a list read with the filter dropped
    assert_400_naming(response, field)


def _cursor(token: str) -> str:
    return quote(base64.b64encode(token.encode()).decode())


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "%00",
        "x" * 500,
        _cursor("o=abc"),
        _cursor("p=abc"),
        _cursor("p=-5"),
        _cursor("p=" + "9" * 30),
        _cursor("p=1.5&r=1"),
    ],
    ids=["garbage", "nul", "long", "offset", "position", "negative", "huge", "fraction"],
)
def test_a_cursor_the_api_did_not_write_is_400_naming_cursor(
    client: APIClient, tenant: Tenant, cursor: str
) -> None:
    # given a few jobs, so that a cursor is applied to a real query
    make_jobs(tenant, 3)
    # when the list is asked for with a cursor that is no `next` or `previous` link of a page
    client.raise_request_exception = False
    response = client.get(f"/v1/jobs?cursor={cursor}")
    # then it is a 400 naming the parameter (not the 404 of a missing page, nor a 500)
    assert_400_naming(response, "cursor")


def test_the_validated_limit_is_the_page_size(client: APIClient, tenant: Tenant) -> None:
    # given 6 jobs
    make_jobs(tenant, 6)
    # when a page of "4.0" is asked for (an integer once validated), then it holds 4 jobs
    assert len(client.get("/v1/jobs?limit=4.0").json()["results"]) == 4


def make_jobs(tenant: Tenant, count: int) -> list[str]:
    return [
        job_submit(tenant=tenant, data={"model": "tiny", "prompt": f"boat {i}"})[0].public_id
        for i in range(count)
    ]


def page_through(client: APIClient, url: str | None) -> list[list[str]]:
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        pages.append([job["id"] for job in response.json()["results"]])
        url = response.json()["next"]
        assert len(pages) <= 10, "pagination does not end"
    return pages


def test_cursor_pagination_pages_newest_first_without_duplicates(
    client: APIClient, tenant: Tenant
) -> None:
    # given 25 jobs
    created = make_jobs(tenant, 25)
    # when the list is read 10 at a time, following `next`
    pages = page_through(client, "/v1/jobs?limit=10")
    # then there are pages of 10, 10 and 5, newest first, each job exactly once
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [job for page in pages for job in page] == created[::-1]


def test_cursor_pagination_keeps_the_filter_and_goes_back(
    client: APIClient, tenant: Tenant
) -> None:
    # given 25 jobs, of which 2 are admitted and 23 wait queued
    make_jobs(tenant, 25)
    queued = list(
        Job.objects.filter(status="queued").order_by("-id").values_list("public_id", flat=True)
    )
    assert len(queued) == 23
    # when the queued ones are paged through 10 at a time
    pages = page_through(client, "/v1/jobs?status=queued&limit=10")
    # then the filter holds on every page
    assert [job for page in pages for job in page] == queued
    assert [len(page) for page in pages] == [10, 10, 3]
    # and `previous` of the second page leads back to the first
    first = client.get("/v1/jobs?status=queued&limit=10").json()
    second = client.get(first["next"]).json()
    back = client.get(second["previous"]).json()
    assert [job["id"] for job in back["results"]] == pages[0]
    assert first["previous"] is None


def test_job_list_defaults_to_20_a_page(client: APIClient, tenant: Tenant) -> None:
    make_jobs(tenant, 21)
    response = client.get("/v1/jobs")
    assert len(response.json()["results"]) == 20
    assert response.json()["next"]
