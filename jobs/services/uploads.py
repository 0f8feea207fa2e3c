"""Uploads: decode and check an image (also used for fetched img2img images), store it once
per Idempotency-Key."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from jobs.models import IdempotencyRecord, Upload, public_id
from jobs.services.idempotency import idempotent_create
from sdsaas.contract import UnreadableImage, decode_input_image, upload_key
from sdsaas.errors import InvalidInput, PayloadTooLarge
from tenants.models import Tenant
from tenants.services import rate_limit_hit


def decode_image(data: bytes) -> tuple[Image.Image, str]:
    """The image and its extension; a 400 naming the field `file` when it is none we take."""
    try:
        return decode_input_image(data, max_pixels=settings.UPLOAD_MAX_PIXELS)
    except UnreadableImage as exc:
        raise InvalidInput("file", str(exc)) from None


def upload_create(
    *, tenant: Tenant, data: bytes, idempotency_key: str | None = None
) -> tuple[Upload, bool]:
    rate_limit_hit(tenant=tenant)
    if len(data) > settings.UPLOAD_MAX_BYTES:
        raise PayloadTooLarge(f"file exceeds {settings.UPLOAD_MAX_BYTES} bytes")
    if not data:
        raise InvalidInput("file", "is empty")
    digest = hashlib.sha256(data).hexdigest()

    def create() -> Upload:
        image, ext = decode_image(data)
        upload_id = public_id("upl")
        key = default_storage.save(upload_key(tenant.pk, upload_id, ext), ContentFile(data))
        return Upload.objects.create(
            public_id=upload_id,
            tenant=tenant,
            storage_key=key,
            content_type=Image.MIME[str(image.format)],
            width=image.width,
            height=image.height,
            size_bytes=len(data),
            sha256=digest,
        )

    return idempotent_create(
        tenant=tenant,
        scope=IdempotencyRecord.Scope.UPLOAD_CREATE,
        key=idempotency_key,
        fingerprint=digest,
        create=create,
        replay=_replayed_upload,
    )


def _replayed_upload(record: IdempotencyRecord) -> Upload:
    assert record.upload is not None, "upload records are saved with their upload"
    return record.upload
