"""The project's S3 storage: django-storages' S3Storage, with small files sent in one PutObject.

django-storages sends every file through boto3's managed transfer (`upload_fileobj`), which
builds a transfer manager, its futures and callbacks for each file: for an image of a few KiB
that costs about three times the CPU of the PutObject it ends in (3.1 against 1.1 ms a file,
measured against the local S3 server). A GPU worker stores every image it makes, on the CPU that
also feeds its GPU and reports its jobs. Files up to the transfer's multipart threshold (8 MiB by
default) now go in one PutObject with the parameters django-storages would give the transfer;
larger ones, and gzipped ones, still take django-storages' own path (multipart, in parallel).
"""

from __future__ import annotations

import os
from typing import Any

from storages.backends import s3
from storages.utils import clean_name, is_seekable

_S3Storage: Any = s3.S3Storage


class S3Storage(_S3Storage):
    def _save(self, name: str, content: Any) -> str:
        if self.gzip or content.size > self.transfer_config.multipart_threshold:
            return str(super()._save(name, content))
        cleaned_name = clean_name(name)
        key = self._normalize_name(cleaned_name)
        params = self._get_write_parameters(key, content)
        if is_seekable(content):
            content.seek(0, os.SEEK_SET)
        body = content.read()
        if isinstance(body, str):
            body = body.encode()
        # The client the transfer would use: the storage's bucket's (thread-safe, shared).
        self.bucket.meta.client.put_object(Bucket=self.bucket_name, Key=key, Body=body, **params)
        return str(cleaned_name)
