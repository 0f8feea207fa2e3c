"""img2img input: `image` is an upload of the tenant's or an https URL to a public host, and
`strength` leaves at least one denoising step."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import Job
from tenants.models import Tenant
from tests.support.factories import UploadFactory
from tests.support.validation import HTTPS_IMAGE, assert_400_naming, nothing_created, submit

# The fixtures `tenant`, `model` and `client` of the validation tests:
from tests.support.validation import validation_client as validation_client
from tests.support.validation import validation_model as validation_model
from tests.support.validation import validation_tenant as validation_tenant

pytestmark = pytest.mark.django_db


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
        # loopback as resolvers also read IPv4
        "https://127.1/cat.png",
        "https://0x7f000001/cat.png",
        "https://2130706433/cat.png",
        "https://0177.0.0.1/cat.png",
        # no host names
        "https://a..b/cat.png",
        "https://-/cat.png",
        "https://images-.example.com/cat.png",
        "https://" + "a" * 64 + ".example.com/cat.png",
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
