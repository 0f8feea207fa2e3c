from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tenants.models import UsageRecord
from tests.e2e.conftest import download, finished
from tests.support.images import image_bytes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]


def test_txt2img_succeeds_with_a_reproducible_png(tenant, model, client, workers):  # type: ignore[no-untyped-def]
    body = {"model": "tiny", "prompt": "a red fox", "width": 64, "height": 96, "steps": 4}
    # when a job is submitted twice with the same seed
    first = client.post("/v1/jobs", {**body, "seed": 1234}, format="json").json()
    second = client.post("/v1/jobs", {**body, "seed": 1234}, format="json").json()
    jobs = [finished(client, first["id"]), finished(client, second["id"])]
    # then both succeed, with a PNG of the asked size that records its seed
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], workers.log("gpu")
    images = [download(job["output"][0]) for job in jobs]
    assert images[0].format == "PNG"
    assert images[0].size == (64, 96)
    record = json.loads(images[0].text["sdsaas"])
    assert record["seed"] == 1234
    assert record["model"]["slug"] == "tiny"
    # and the same input and seed give byte-identical pixels
    assert images[0].tobytes() == images[1].tobytes()
    assert jobs[0]["metrics"]["inference_s"] > 0
    assert jobs[0]["progress"] == {"step": 4, "total": 4}
    assert UsageRecord.objects.filter(tenant=tenant).count() == 2


def test_img2img_from_an_upload_succeeds_and_records_its_strength(model, client, workers):  # type: ignore[no-untyped-def]
    # given an uploaded photo
    jpeg = image_bytes("JPEG", (80, 64), (30, 90, 200))
    photo = SimpleUploadedFile("photo.jpg", jpeg, content_type="image/jpeg")
    upload = client.post("/v1/uploads", {"file": photo}, format="multipart").json()
    # when an img2img job uses it, as WebP output
    body = {"model": "tiny", "prompt": "as a watercolour", "image": upload["id"], "strength": 0.5}
    fields = {"width": 64, "height": 64, "steps": 4, "seed": 7, "output_format": "webp"}
    job_id = client.post("/v1/jobs", {**body, **fields}, format="json").json()["id"]
    job = finished(client, job_id)
    # then it succeeds with a WebP of the asked size whose record names the input and strength
    assert (job["status"], job["kind"]) == ("succeeded", "img2img"), workers.log("gpu")
    image = download(job["output"][0])
    assert (image.format, image.size) == ("WEBP", (64, 64))
    record = json.loads(image.getexif()[0x010E])
    assert record["input"]["image"] == upload["id"]
    assert (record["input"]["strength"], record["seed"]) == (0.5, 7)
