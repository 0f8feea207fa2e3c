"""S3 locations: parsing `s3://` URIs and listing the objects a source is made of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from gpu_worker.model_store.errors import ModelNotFound, ModelStoreError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> `("bucket", "some/key")`."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ModelStoreError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


@dataclass(frozen=True)
class S3Object:
    key: str
    relative: str  # path under the downloaded folder; "" for a single-file source
    size: int
    etag: str


def is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") in _NOT_FOUND_CODES


def _safe_relative(relative: str, uri: str) -> str:
    # A key such as "prefix/../../x" must not write outside the download folder.
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise ModelStoreError(f"unsafe object key under {uri}: {relative!r}")
    return relative


def list_source(client: S3Client, uri: str) -> tuple[str, list[S3Object]]:
    """The objects of a source and the name its copy gets; ModelNotFound when there are none."""
    bucket, key = parse_s3_uri(uri)
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if not is_not_found(exc):
                raise
        else:
            name = key.rsplit("/", 1)[-1]
            return name, [S3Object(key, "", head["ContentLength"], head["ETag"])]
        key += "/"
    objects: list[S3Object] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                relative = item["Key"][len(key) :]
                if relative.endswith("/") and item["Size"] == 0:
                    continue  # a "folder" placeholder made by consoles, not a file
                objects.append(
                    S3Object(item["Key"], _safe_relative(relative, uri), item["Size"], item["ETag"])
                )
    except ClientError as exc:
        if is_not_found(exc):
            raise ModelNotFound(f"no bucket for {uri}") from exc
        raise
    if not objects:
        raise ModelNotFound(f"no object at or under {uri}")
    return key.rstrip("/").rsplit("/", 1)[-1] or "model", objects
