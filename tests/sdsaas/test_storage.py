"""The project's S3 storage (sdsaas/storage.py) against the local S3 server: a small file goes in
one PutObject, a large one through django-storages' managed transfer, both stored the same."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3.s3.inject
import pytest
from boto3.s3.transfer import TransferConfig
from django.conf import settings
from django.core.files.base import ContentFile

from sdsaas.storage import S3Storage

pytestmark = pytest.mark.usefixtures("local_aws")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Storage, list[str]]]:
    """A storage on the local bucket whose transfer takes files above 1 KiB in parts, and the
    S3 operations its client makes ("transfer" where boto3 builds a managed transfer)."""
    options: dict[str, Any] = settings.STORAGES["default"]["OPTIONS"]
    storage = S3Storage(**options, transfer_config=TransferConfig(multipart_threshold=1024))
    made: list[str] = []
    create_transfer_manager = boto3.s3.inject.create_transfer_manager

    def transfer(*args: Any, **kwargs: Any) -> Any:
        made.append("transfer")
        return create_transfer_manager(*args, **kwargs)

    monkeypatch.setattr(boto3.s3.inject, "create_transfer_manager", transfer)

    def record(model: Any, **_: Any) -> None:
        made.append(model.name)

    events = storage.bucket.meta.client.meta.events
    events.register("before-call.s3.*", record)
    yield storage, made
    events.unregister("before-call.s3.*", record)


def stored(storage: S3Storage, key: str) -> tuple[bytes, str]:
    answer = storage.bucket.meta.client.get_object(Bucket=storage.bucket_name, Key=key)
    return answer["Body"].read(), answer["ContentType"]


def test_a_small_file_goes_in_one_put_object_with_the_parameters_of_the_transfer(
    calls: tuple[S3Storage, list[str]],
) -> None:
    storage, made = calls
    key = storage.save("tenants/1/jobs/job_small/0.png", ContentFile(b"\x89PNG small" * 50))
    assert key == "tenants/1/jobs/job_small/0.png"
    assert made == ["PutObject"]
    assert stored(storage, key) == (b"\x89PNG small" * 50, "image/png")


def test_a_file_past_the_multipart_threshold_still_goes_through_the_transfer(
    calls: tuple[S3Storage, list[str]],
) -> None:
    storage, made = calls
    data = bytes(range(256)) * 8  # 2 KiB
    key = storage.save("tenants/1/jobs/job_large/0.webp", ContentFile(data))
    assert made[:2] == ["transfer", "CreateMultipartUpload"] and "PutObject" not in made
    assert stored(storage, key) == (data, "image/webp")


def test_text_content_is_stored_as_its_utf_8_bytes(calls: tuple[S3Storage, list[str]]) -> None:
    storage, _ = calls
    key = storage.save("tenants/1/notes/ünïcode.txt", ContentFile("grüße"))
    assert stored(storage, key) == ("grüße".encode(), "text/plain")
