"""`push` (upload weights, return what the catalog needs) and the command line.

python -m gpu_worker.model_store digest PATH
python -m gpu_worker.model_store push PATH s3://bucket/prefix/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from gpu_worker.model_store.errors import ModelStoreError
from gpu_worker.model_store.hashing import digest, folder_files
from gpu_worker.model_store.s3 import is_not_found, parse_s3_uri
from gpu_worker.model_store.store import s3_client_from_env

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def push(client: S3Client, path: Path, dest_uri: str) -> tuple[str, str]:
    """Upload a folder (under the prefix) or a file; return the catalog's (source_uri, sha256).

    Never overwrites: a revision is immutable once a catalog row names its hash, so push each
    revision to a new prefix or key. A folder to `s3://b/p` lands under `p/`; a file to a URI
    ending in `/` keeps its name, otherwise the URI is its key.
    """
    bucket, key = parse_s3_uri(dest_uri)
    value = digest(path)  # before the upload: what we hash is what we send
    if path.is_dir():
        prefix = f"{key.strip('/')}/" if key.strip("/") else ""
        uploads = {f"{prefix}{rel}": file for rel, file in sorted(folder_files(path).items())}
        existing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        if existing.get("KeyCount", 0):
            raise ModelStoreError(f"s3://{bucket}/{prefix} is not empty; push to a new prefix")
        source_uri = f"s3://{bucket}/{prefix}"
    else:
        object_key = f"{key}{path.name}" if not key or key.endswith("/") else key
        uploads = {object_key: path}
        try:
            client.head_object(Bucket=bucket, Key=object_key)
        except ClientError as exc:
            if not is_not_found(exc):
                raise
        else:
            raise ModelStoreError(f"s3://{bucket}/{object_key} exists; push to a new key")
        source_uri = f"s3://{bucket}/{object_key}"
    for object_key, file in uploads.items():
        client.upload_file(str(file), bucket, object_key)  # multipart above 8 MiB, by itself
    return source_uri, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpu_worker.model_store",
        description="Compute the catalog digest of weights, or upload them to S3.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    digest_cmd = commands.add_parser("digest", help="print the catalog sha256 of a file/folder")
    digest_cmd.add_argument("path", type=Path)
    push_cmd = commands.add_parser("push", help="upload a file/folder; print source_uri, sha256")
    push_cmd.add_argument("path", type=Path)
    push_cmd.add_argument("dest", help="s3://bucket/prefix/ (folder) or s3://bucket/key (file)")
    args = parser.parse_args(argv)
    try:
        if args.command == "digest":
            print(digest(args.path))
        else:
            source_uri, value = push(s3_client_from_env(), args.path, args.dest)
            print(f"source_uri={source_uri}")
            print(f"sha256={value}")
    except (ModelStoreError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
