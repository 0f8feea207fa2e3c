"""Uploads: decode and check an image (also used for fetched img2img images), store it once
per Idempotency-Key."""

from __future__ import annotations

import hashlib
import io
import warnings

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image, UnidentifiedImageError

from jobs.models import IdempotencyRecord, Upload, public_id
from jobs.services.idempotency import idempotent_create
from sdsaas.errors import InvalidInput, PayloadTooLarge
from tenants.models import Tenant
from tenants.services import rate_limit_hit

UPLOAD_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def decode_image(data: bytes) -> tuple[Image.Image, str]:
    """Open and fully decode, refusing other formats and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in UPLOAD_FORMATS:
                raise InvalidInput("file", "must be a PNG, JPEG or WebP image")
            if image.width * image.height > settings.UPLOAD_MAX_PIXELS:
                raise InvalidInput(
                    "file",
                    f"image of {image.width}x{image.height} exceeds "
                    f"{settings.UPLOAD_MAX_PIXELS} pixels",
                )
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput("file", f"is not a readable image ({exc.__class__.__name__})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidInput("file", "image has too many pixels (decompression bomb)") from None
    return image, UPLOAD_FORMATS[str(image.format)]


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
        key = default_storage.save(
            f"tenants/{tenant.pk}/uploads/{upload_id}.{ext}", ContentFile(data)
        )
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
