"""POST /v1/uploads: img2img input images, stored in S3 under the tenant, and jobs that use them."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.parsers import MultiPartParser
from rest_framework.test import APIClient

from jobs import apis
from jobs.models import IdempotencyRecord, Job, Upload
from sdsaas.broker.sqs import control_queue_name, model_queue_name
from sdsaas.contract import TASK_FETCH_INPUT_IMAGE
from tenants.models import CreditPeriod
from tests.support.api import assert_error
from tests.support.factories import JobFactory, TenantFactory, api_client_for
from tests.support.images import image_bytes, many_scans_jpeg, single_colour_png

pytestmark = pytest.mark.usefixtures("local_aws")

MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def upload(client, data: bytes, name: str = "input.png", key: str | None = None, **extra):  # type: ignore[no-untyped-def]
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    body = {"file": SimpleUploadedFile(name, data, content_type="application/octet-stream")}
    return client.post("/v1/uploads", {**body, **extra}, format="multipart", **headers)


def bucket_keys(local_aws) -> set[str]:  # type: ignore[no-untyped-def]
    s3 = local_aws.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.S3_BUCKET)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def s3_object(local_aws, key: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    obj = local_aws.client("s3").get_object(Bucket=settings.S3_BUCKET, Key=key)
    return {"body": obj["Body"].read(), "content_type": obj["ContentType"]}


# --- accepted formats ----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_stored_in_s3_under_the_tenant(local_aws, tenant, client, fmt):  # type: ignore[no-untyped-def]
    # given an image of 64x48 in the format
    data = image_bytes(fmt, (64, 48))
    # when the tenant uploads it
    response = upload(client, data, name=f"photo.{EXT[fmt]}")
    # then the upload object describes the image
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"].startswith("upl_")
    assert (body["width"], body["height"]) == (64, 48)
    assert body["content_type"] == MIME[fmt]
    assert body["size_bytes"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    # and the very bytes are in S3 under the tenant's uploads prefix
    stored = Upload.objects.get(public_id=body["id"])
    assert stored.tenant == tenant
    assert stored.storage_key == f"tenants/{tenant.pk}/uploads/{body['id']}.{EXT[fmt]}"
    obj = s3_object(local_aws, stored.storage_key)
    assert obj["body"] == data
    assert obj["content_type"] == MIME[fmt]


@pytest.mark.django_db
def test_the_format_comes_from_the_bytes_not_the_file_name(local_aws, tenant, client):  # type: ignore[no-untyped-def]
    # given PNG bytes sent as "photo.jpg"
    data = image_bytes("PNG")
    # when they are uploaded
    response = upload(client, data, name="photo.jpg")
    # then the upload is a PNG, stored with the .png extension
    assert response.status_code == 201
    assert response.json()["content_type"] == "image/png"
    assert Upload.objects.get().storage_key.endswith(".png")


# --- refused files -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "data"),
    [
        pytest.param("anim.png", image_bytes("GIF"), id="gif"),
        pytest.param("bitmap.png", image_bytes("BMP"), id="bmp"),
        pytest.param("notes.png", b"just some text, not an image\n" * 10, id="text"),
        pytest.param("empty.png", b"", id="empty"),
    ],
)
def test_other_formats_text_and_empty_files_are_400_naming_file(  # type: ignore[no-untyped-def]
    local_aws, tenant, client, name, data
):
    # given what is in the bucket before
    before = bucket_keys(local_aws)
    # when a file that is not a PNG, JPEG or WebP image is uploaded
    response = upload(client, data, name=name)
    # then it is a 400 naming `file`, and nothing was stored
    assert_error(response, 400, "invalid_input", field="file")
    assert Upload.objects.count() == 0
    assert bucket_keys(local_aws) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [pytest.param({}, id="missing"), pytest.param({"file": "not a file"}, id="plain-field")],
)
def test_a_request_without_a_file_is_400_naming_file(local_aws, tenant, client, body):  # type: ignore[no-untyped-def]
    before = bucket_keys(local_aws)
    # when the multipart body has no file part
    response = client.post("/v1/uploads", body, format="multipart")
    # then it is a 400 naming `file`
    assert_error(response, 400, "invalid_input", field="file")
    assert Upload.objects.count() == 0
    assert bucket_keys(local_aws) == before


@pytest.mark.django_db
def test_a_json_body_is_415(local_aws, tenant, client):  # type: ignore[no-untyped-def]
    # when the upload is sent as JSON instead of multipart
    response = client.post("/v1/uploads", {"file": "aGVsbG8="}, format="json")
    # then the media type is refused in the uniform shape
    assert_error(response, 415, "unsupported_media_type")
    assert Upload.objects.count() == 0


@pytest.mark.django_db
def test_a_file_over_the_default_10_mb_cap_is_413(local_aws, tenant, client):  # type: ignore[no-untyped-def]
    # given a file one byte over the default cap of 10 MB (a PNG header and padding)
    assert settings.UPLOAD_MAX_BYTES == 10 * 1024 * 1024
    data = image_bytes("PNG").ljust(settings.UPLOAD_MAX_BYTES + 1, b"\x00")
    before = bucket_keys(local_aws)
    # when it is uploaded
    response = upload(client, data)
    # then it is refused as too large, and nothing was stored
    assert_error(response, 413, "payload_too_large")
    assert Upload.objects.count() == 0
    assert bucket_keys(local_aws) == before


@pytest.mark.django_db
def test_the_size_cap_is_inclusive(local_aws, tenant, client, settings):  # type: ignore[no-untyped-def]
    # given a cap of exactly the size of a valid PNG
    data = image_bytes("PNG")
    settings.UPLOAD_MAX_BYTES = len(data)
    # when a PNG of exactly that size, then one a byte bigger, are uploaded
    at_cap = upload(client, data)
    over_cap = upload(client, data + b"\x00")
    # then the first is stored and the second is a 413
    assert at_cap.status_code == 201
    assert_error(over_cap, 413, "payload_too_large")
    assert Upload.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "side",
    [
        pytest.param(5000, id="over-UPLOAD_MAX_PIXELS"),
        pytest.param(10_000, id="over-pillow-warning-limit"),
        pytest.param(20_000, id="over-pillow-error-limit"),
    ],
)
def test_a_decompression_bomb_is_400_and_not_stored(local_aws, tenant, client, side):  # type: ignore[no-untyped-def]
    # given a PNG of a few KB that decodes to side x side pixels
    data = single_colour_png(side, side)
    assert len(data) < 64 * 1024
    before = bucket_keys(local_aws)
    # when it is uploaded
    response = upload(client, data)
    # then it is refused before decoding, naming `file`, and nothing was stored
    assert_error(response, 400, "invalid_input", field="file")
    assert "pixels" in response.json()["error"]["message"]
    assert Upload.objects.count() == 0
    assert bucket_keys(local_aws) == before


@pytest.mark.django_db
def test_the_pixel_cap_follows_the_setting(local_aws, tenant, client, settings):  # type: ignore[no-untyped-def]
    # given a pixel cap of 64x64
    settings.UPLOAD_MAX_PIXELS = 64 * 64
    before = bucket_keys(local_aws)
    # when a 64x64 image and a 65x64 image are uploaded
    at_cap = upload(client, image_bytes("PNG", (64, 64)))
    over_cap = upload(client, image_bytes("PNG", (65, 64)))
    # then only the first is stored
    assert at_cap.status_code == 201
    assert_error(over_cap, 400, "invalid_input", field="file")
    assert Upload.objects.count() == 1
    assert bucket_keys(local_aws) - before == {Upload.objects.get().storage_key}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:60] + bytes([data[60] ^ 0xFF]) + data[61:], id="corrupt"),
        pytest.param(lambda data: data[:24], id="header-only"),
    ],
)
def test_a_truncated_or_corrupt_png_is_400(local_aws, tenant, client, damage):  # type: ignore[no-untyped-def]
    # given a PNG damaged in its image data
    data = damage(image_bytes("PNG", (64, 64), color=(10, 120, 240)))
    before = bucket_keys(local_aws)
    # when it is uploaded
    response = upload(client, data)
    # then it is a 400 naming `file`, and nothing was stored
    assert_error(response, 400, "invalid_input", field="file")
    assert Upload.objects.count() == 0
    assert bucket_keys(local_aws) == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("scopes", "status", "code"),
    [
        pytest.param(None, 401, "unauthenticated", id="no-key"),
        pytest.param(["jobs:read"], 403, "forbidden", id="read-only-key"),
    ],
)
def test_only_a_key_with_write_scope_can_upload(local_aws, tenant, scopes, status, code):  # type: ignore[no-untyped-def]
    # given no key, or a key with only the read scope
    client = APIClient() if scopes is None else api_client_for(tenant, scopes=scopes)
    before = bucket_keys(local_aws)
    # when it uploads an image
    response = upload(client, image_bytes("PNG"))
    # then it is refused and nothing was stored
    assert_error(response, status, code)
    assert Upload.objects.count() == 0
    assert bucket_keys(local_aws) == before


@pytest.mark.django_db
def test_a_jpeg_of_too_many_scans_is_400_and_a_progressive_one_is_stored(local_aws, tenant, client):  # type: ignore[no-untyped-def]
    # given a small JPEG of thousands of scans, each decoded over the whole image (CPU seconds
    # to minutes), and a progressive JPEG as encoders write them
    bomb = many_scans_jpeg(256, 2000)
    progressive = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(progressive, "JPEG", progressive=True)
    # when both are uploaded, then the bomb is refused before decoding, naming `file`
    response = upload(client, bomb, name="bomb.jpg")
    assert_error(response, 400, "invalid_input", field="file")
    assert "scans" in response.json()["error"]["message"]
    assert upload(client, progressive.getvalue(), name="ok.jpg").status_code == 201
    assert Upload.objects.count() == 1


@pytest.mark.django_db
def test_an_oversized_file_is_not_read_whole_into_memory(  # type: ignore[no-untyped-def]
    local_aws, tenant, client, settings, monkeypatch
):
    # given a cap of 4 KB and a spy on the bytes the view hands to the service
    settings.UPLOAD_MAX_BYTES = 4096
    seen: list[int] = []
    real_upload_create = apis.upload_create

    def spy(*, data: bytes, **kwargs: Any) -> Any:
        seen.append(len(data))
        return real_upload_create(data=data, **kwargs)

    monkeypatch.setattr(apis, "upload_create", spy)
    parsed: list[int] = []
    real_parse = MultiPartParser.parse

    def parse(*args: Any, **kwargs: Any) -> Any:
        parsed.append(1)
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(MultiPartParser, "parse", parse)
    # when a file a few KB over the cap is uploaded (its body within the multipart allowance)
    response = upload(client, image_bytes("PNG").ljust(8 * 1024, b"\x00"))
    # then it is a 413, decided on at most cap + 1 bytes rather than on the whole body
    assert_error(response, 413, "payload_too_large")
    assert seen and max(seen) <= settings.UPLOAD_MAX_BYTES + 1
    # and when a 1 MB file is uploaded, then it is a 413 before its body is even parsed (the
    # parser writes a body to a temporary file first, whatever its size)
    seen.clear()
    parsed.clear()
    response = upload(client, image_bytes("PNG").ljust(1024 * 1024, b"\x00"))
    assert_error(response, 413, "payload_too_large")
    assert seen == [] and parsed == []


# --- idempotency ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_same_key_same_file_returns_the_same_upload(local_aws, tenant, client):  # type: ignore[no-untyped-def]
    # given an upload made with an Idempotency-Key
    data = image_bytes("PNG")
    before = bucket_keys(local_aws)
    first = upload(client, data, key="upl-1")
    # when the same file is sent again with the same key
    again = upload(client, data, key="upl-1")
    # then the same upload is answered (201 again, as the original), stored once
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert Upload.objects.count() == 1
    assert len(bucket_keys(local_aws) - before) == 1


@pytest.mark.django_db
def test_same_key_other_file_is_422_and_stores_nothing(local_aws, tenant, client):  # type: ignore[no-untyped-def]
    # given an upload made with a key
    first = upload(client, image_bytes("PNG"), key="upl-1")
    after_first = bucket_keys(local_aws)
    # when another file is sent with the same key
    response = upload(client, image_bytes("PNG", color=(0, 255, 0)), key="upl-1")
    # then it is a 422 and nothing more was stored
    assert first.status_code == 201
    assert_error(response, 422, "idempotency_key_reused")
    assert list(Upload.objects.values_list("public_id", flat=True)) == [first.json()["id"]]
    assert bucket_keys(local_aws) == after_first


@pytest.mark.django_db
def test_a_refused_upload_does_not_use_up_its_key(local_aws, tenant, client):  # type: ignore[no-untyped-def]
    # given an upload refused as corrupt, sent with a key
    refused = upload(client, b"not an image", key="upl-1")
    # when a valid image is sent with the same key
    response = upload(client, image_bytes("PNG"), key="upl-1")
    # then the key was not recorded for the refused request: the image is stored
    assert refused.status_code == 400
    assert response.status_code == 201
    assert IdempotencyRecord.objects.get().upload == Upload.objects.get()


@pytest.mark.django_db
def test_upload_keys_are_per_tenant(local_aws, tenant, other_tenant, client):  # type: ignore[no-untyped-def]
    # given the same file and key sent by two tenants
    data = image_bytes("PNG")
    mine = upload(client, data, key="shared")
    theirs = upload(api_client_for(other_tenant), data, key="shared")
    # then each has its own upload, under its own prefix
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert Upload.objects.get(tenant=other_tenant).storage_key.startswith(
        f"tenants/{other_tenant.pk}/uploads/"
    )


# --- img2img jobs --------------------------------------------------------------------------------


def submit(client, **fields):  # type: ignore[no-untyped-def]
    body = {"model": "tiny", "prompt": "the same fox, in winter", **fields}
    return client.post("/v1/jobs", body, format="json")


@pytest.mark.django_db(transaction=True)
def test_a_job_on_an_upload_is_img2img_with_default_strength(local_aws, tenant, model, client):  # type: ignore[no-untyped-def]
    # given an uploaded image
    upload_id = upload(client, image_bytes("PNG")).json()["id"]
    stored = Upload.objects.get(public_id=upload_id)
    # when a job is submitted on it without a strength
    response = submit(client, image=upload_id)
    # then it is an img2img job with strength 0.8 that points the worker at the S3 object
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["kind"] == "img2img"
    assert body["input"]["image"] == upload_id
    assert body["input"]["strength"] == 0.8
    job = Job.objects.get(public_id=body["id"])
    assert (job.init_image_key, job.init_image_url) == (stored.storage_key, "")
    (task,) = local_aws.drain_tasks(model_queue_name("tiny"))
    assert task["kwargs"]["job"]["init_image_key"] == stored.storage_key


@pytest.mark.django_db(transaction=True)
def test_an_https_url_is_img2img_stored_as_init_image_url(local_aws, tenant, model, client):  # type: ignore[no-untyped-def]
    # when a job is submitted on an https URL with an explicit strength
    response = submit(client, image="https://example.com/a.png", strength=0.35)
    # then it is accepted as img2img and the URL is kept for the control worker to fetch
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["kind"] == "img2img"
    assert body["input"]["strength"] == 0.35
    job = Job.objects.get(public_id=body["id"])
    assert (job.init_image_url, job.init_image_key) == ("https://example.com/a.png", "")
    # and the control worker is asked to fetch it; no GPU sees the job before that
    assert local_aws.drain_tasks(control_queue_name()) == [
        {"task": TASK_FETCH_INPUT_IMAGE, "kwargs": {"job_pk": job.pk}}
    ]
    assert local_aws.drain_tasks(model_queue_name("tiny")) == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "image",
    [
        pytest.param("upl_00000000000000000000", id="unknown-upload"),
        pytest.param("http://example.com/a.png", id="plain-http"),
        pytest.param("file:///etc/passwd", id="file-url"),
    ],
)
def test_an_unknown_upload_or_non_https_image_is_400(local_aws, tenant, model, client, image):  # type: ignore[no-untyped-def]
    response = submit(client, image=image)
    assert_error(response, 400, "invalid_input", field="image")
    assert Job.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_another_tenants_upload_is_unknown(local_aws, model):  # type: ignore[no-untyped-def]
    # given tenant A's upload
    tenant_a, tenant_b = TenantFactory(), TenantFactory()
    upload_id = upload(api_client_for(tenant_a), image_bytes("PNG")).json()["id"]
    # when tenant B submits a job on it
    response = submit(api_client_for(tenant_b), image=upload_id)
    # then it is refused as an unknown upload, and B has no job and no reserved credit
    assert_error(response, 400, "invalid_input", field="image")
    assert response.json()["error"]["message"] == f"image: unknown upload {upload_id!r}"
    assert not Job.objects.exists()
    assert not CreditPeriod.objects.filter(tenant=tenant_b, reserved__gt=0).exists()


@pytest.mark.django_db(transaction=True)
def test_a_succeeded_jobs_id_is_img2img_from_its_first_image(local_aws, tenant, model, client):  # type: ignore[no-untyped-def]
    # given a succeeded job of the tenant, with two images
    keys = [f"tenants/{tenant.pk}/jobs/j/0.png", f"tenants/{tenant.pk}/jobs/j/1.png"]
    previous = JobFactory(tenant=tenant, status=Job.Status.SUCCEEDED, output_keys=keys)
    # when a job is submitted on its id
    response = submit(client, image=previous.public_id, strength=0.5)
    # then it is img2img from the first image, and the GPU gets that key
    assert response.status_code == 202, response.content
    job = Job.objects.get(public_id=response.json()["id"])
    assert (job.kind, job.init_image_key, job.input["image"]) == (
        "img2img",
        keys[0],
        previous.public_id,
    )
    (task,) = local_aws.drain_tasks(model_queue_name("tiny"))
    assert task["kwargs"]["job"]["init_image_key"] == keys[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("status", ["queued", "failed"])
def test_a_job_without_images_or_another_tenants_job_is_no_image(local_aws, model, status):  # type: ignore[no-untyped-def]
    tenant_a, tenant_b = TenantFactory(), TenantFactory()
    key = [f"tenants/{tenant_a.pk}/jobs/j/0.png"]
    unfinished = JobFactory(tenant=tenant_b, status=status)
    someone_elses = JobFactory(tenant=tenant_a, status=Job.Status.SUCCEEDED, output_keys=key)
    for image in (unfinished.public_id, someone_elses.public_id):
        response = submit(api_client_for(tenant_b), image=image)
        assert_error(response, 400, "invalid_input", field="image")
        assert response.json()["error"]["message"] == (
            f"image: no succeeded job {image!r} with an image"
        )
    assert Job.objects.filter(tenant=tenant_b).count() == 1
