"""Model weights on local disk: a local folder or file as is, or an S3 copy cached by its hash.

    python -m gpu_worker.model_store digest PATH
    python -m gpu_worker.model_store push PATH s3://bucket/prefix/

The catalog (`DiffusionModel.sha256`, `LoraAdapter.sha256`) holds ONE digest per source:

- a single file (e.g. a LoRA `.safetensors`): the SHA-256 of its bytes, as `sha256sum` prints;
- a folder (a diffusers pipeline, or a LoRA in folder form): the SHA-256 of the UTF-8 text made
  of one line `"<relative posix path>\\t<sha256 of the file>\\n"` per regular file under it, at
  any depth, sorted by path (code point order). Empty folders do not count, as S3 has none.

`digest(path)` computes it; `push` uploads and prints it; operators put it in the catalog.

Sources and their hash:
- an absolute path or `file://` URI is used where it is, never copied. Its hash may be empty
  (not verified: development and weights baked into the image); when set, the folder is
  hashed once per `ModelStore` and a mismatch raises `ModelIntegrityError`.
- `s3://bucket/key` (one object) or `s3://bucket/prefix/` (every object under the prefix; a key
  with no trailing slash that is not an object is read as a prefix) MUST have a hash: it names
  the cache entry and is what makes a copy trustworthy. An empty one raises `ModelStoreError`.

Cache contract (`cache_dir`):
- `<sha256>/<name>` is a verified copy, `<name>` being the file's or the folder's last segment.
  It appears by one atomic `rename` of a temp dir, after every file was fsynced and the digest
  matched, so a crash at any point leaves either no entry or a complete one. A present entry
  is a hit and S3 is not asked at all (it is content addressed: same hash, same bytes).
- `.tmp/<sha256>-*` are downloads in progress or left by a dead process; never a hit, removed by
  the next download of that hash.
- `.locks/<sha256>.lock`: `flock` held while downloading, so threads and processes sharing the
  cache download a model once; the others wait, then take the hit. The kernel drops the lock
  when its holder dies. Nothing is evicted: size the disk for the models a pool serves.

Errors: `ModelStoreError` and its subclasses `ModelNotFound`, `ModelIntegrityError` are final
(retrying gives the same answer). S3 connection trouble and 5xx answers that outlast botocore's
own retries propagate as botocore errors (`BotoCoreError`, `ClientError`): transient.

No Django here: the CLI and tests import it without settings.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_MAX_WORKERS = 8
_CHUNK = MiB
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class ModelStoreError(Exception):
    """The source cannot give these weights, and asking again will not change that."""


class ModelNotFound(ModelStoreError):
    """No file, folder, bucket, object or prefix at the source URI."""


class ModelIntegrityError(ModelStoreError):
    """The bytes at the source do not have the catalog's digest."""


# --- the digest -------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digest(file_hashes: Mapping[str, str]) -> str:
    """The folder digest from `{relative posix path: sha256 of the file}`."""
    digest = hashlib.sha256()
    for relative in sorted(file_hashes):
        digest.update(f"{relative}\t{file_hashes[relative]}\n".encode())
    return digest.hexdigest()


def _folder_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def digest(path: Path) -> str:
    """The catalog digest of a local file or folder (see the module docstring)."""
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        return folder_digest({rel: file_sha256(p) for rel, p in _folder_files(path).items()})
    raise FileNotFoundError(f"no file or folder at {path}")


# --- S3 locations -----------------------------------------------------------------------------


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> `("bucket", "some/key")`."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ModelStoreError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


@dataclass(frozen=True)
class _Object:
    key: str
    relative: str  # path under the downloaded folder; "" for a single-file source
    size: int
    etag: str


def _is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") in _NOT_FOUND_CODES


def _safe_relative(relative: str, uri: str) -> str:
    # A key such as "prefix/../../x" must not write outside the download folder.
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise ModelStoreError(f"unsafe object key under {uri}: {relative!r}")
    return relative


def _list_source(client: S3Client, uri: str) -> tuple[str, list[_Object]]:
    """The objects of a source and the name its copy gets; ModelNotFound when there are none."""
    bucket, key = parse_s3_uri(uri)
    if key and not key.endswith("/"):
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if not _is_not_found(exc):
                raise
        else:
            name = key.rsplit("/", 1)[-1]
            return name, [_Object(key, "", head["ContentLength"], head["ETag"])]
        key += "/"
    objects: list[_Object] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                relative = item["Key"][len(key) :]
                if relative.endswith("/") and item["Size"] == 0:
                    continue  # a "folder" placeholder made by consoles, not a file
                objects.append(
                    _Object(item["Key"], _safe_relative(relative, uri), item["Size"], item["ETag"])
                )
    except ClientError as exc:
        if _is_not_found(exc):
            raise ModelNotFound(f"no bucket for {uri}") from exc
        raise
    if not objects:
        raise ModelNotFound(f"no object at or under {uri}")
    return key.rstrip("/").rsplit("/", 1)[-1] or "model", objects


# --- the store --------------------------------------------------------------------------------


class ModelStore:
    """Resolves a catalog `source_uri` + `sha256` to a verified local path (see module docs).

    `s3_client_factory` is called once per download, not per hit, so a worker whose models are
    cached or local never builds a client. The client is shared by `max_workers` threads: give
    it `max_pool_connections >= max_workers` (`s3_client_from_env` does).
    """

    def __init__(
        self,
        cache_dir: Path,
        s3_client_factory: Callable[[], S3Client],
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> None:
        if part_size < 1 or max_workers < 1:
            raise ValueError("part_size and max_workers must be positive")
        self.cache_dir = Path(cache_dir)
        self.tmp_dir = self.cache_dir / ".tmp"
        self.lock_dir = self.cache_dir / ".locks"
        self.s3_client_factory = s3_client_factory
        self.part_size = part_size
        self.max_workers = max_workers
        # Local sources already hashed by this store: hashing GBs on every job would cost more
        # than the job. A race only hashes twice.
        self._verified_local: set[tuple[Path, str]] = set()

    def local_path(self, source_uri: str, sha256: str) -> Path:
        """A local file or folder holding exactly the weights the catalog names.

        Raises ModelNotFound, ModelIntegrityError or ModelStoreError (final), or a botocore
        error (transient). Safe to call from many threads and processes at once.
        """
        expected = sha256.strip().lower()
        if expected and not _SHA256.fullmatch(expected):
            raise ModelStoreError(f"catalog sha256 is not 64 hex digits: {sha256!r}")
        if source_uri.startswith("s3://"):
            if not expected:
                raise ModelStoreError(
                    f"{source_uri} has no sha256 in the catalog; S3 sources must be pinned "
                    "(compute it with `python -m gpu_worker.model_store digest PATH`)"
                )
            return self._s3_path(source_uri, expected)
        return self._local_source(source_uri, expected)

    # -- local sources --

    def _local_source(self, source_uri: str, expected: str) -> Path:
        if source_uri.startswith("file://"):
            parsed = urlparse(source_uri)
            if parsed.netloc not in ("", "localhost"):
                raise ModelStoreError(f"file:// URI on another host: {source_uri!r}")
            path = Path(unquote(parsed.path))
        elif "://" in source_uri:
            raise ModelStoreError(f"unsupported model source: {source_uri!r}")
        else:
            path = Path(source_uri)
        if not path.is_absolute():
            # Relative to what? The worker's cwd differs between images and tests.
            raise ModelStoreError(f"local model sources must be absolute paths: {source_uri!r}")
        if not path.exists():
            raise ModelNotFound(f"no file or folder at {path}")
        if expected and (path, expected) not in self._verified_local:
            actual = digest(path)
            if actual != expected:
                raise ModelIntegrityError(
                    f"{path} has digest {actual}, the catalog says {expected}"
                )
            self._verified_local.add((path, expected))
        return path

    # -- S3 sources --

    def _hit(self, entry: Path) -> Path | None:
        if not entry.is_dir():
            return None
        children = list(entry.iterdir())
        return children[0] if len(children) == 1 else None

    @contextlib.contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        # Each call opens its own file description, so flock also excludes threads of this
        # process, not only other processes.
        with (self.lock_dir / f"{sha256}.lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield

    def _s3_path(self, source_uri: str, expected: str) -> Path:
        entry = self.cache_dir / expected
        if (hit := self._hit(entry)) is not None:
            return hit
        with self._locked(expected):
            if (hit := self._hit(entry)) is not None:
                return hit  # another thread or process downloaded it while we waited
            # Holding the lock, any temp dir for this hash belongs to a dead download.
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            for leftover in self.tmp_dir.glob(f"{expected}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            if entry.exists():
                # Not something this module writes (a rename brings exactly one child); a
                # person's doing. Replace it rather than trust it.
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            return self._download(source_uri, expected, entry)

    def _download(self, source_uri: str, expected: str, entry: Path) -> Path:
        started = time.monotonic()
        client = self.s3_client_factory()
        name, objects = _list_source(client, source_uri)
        bucket, _ = parse_s3_uri(source_uri)
        tmp = Path(tempfile.mkdtemp(prefix=f"{expected}-", dir=self.tmp_dir))
        try:
            target = tmp / name
            single_file = len(objects) == 1 and objects[0].relative == ""
            files = {
                obj.relative: target / obj.relative if obj.relative else target for obj in objects
            }
            with ThreadPoolExecutor(self.max_workers, thread_name_prefix="model-store") as pool:
                self._run_all(pool, self._part_jobs(client, bucket, objects, files))
                hashes = self._run_all(pool, [(_seal, (path,)) for path in files.values()])
            file_hashes = dict(zip(files, hashes, strict=True))
            actual = file_hashes[""] if single_file else folder_digest(file_hashes)
            if actual != expected:
                raise ModelIntegrityError(
                    f"{source_uri} has digest {actual}, the catalog says {expected}"
                )
            for folder in sorted({p.parent for p in files.values()}, reverse=True):
                _fsync_dir(folder)
            os.rename(tmp, entry)
            _fsync_dir(self.cache_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
        logger.info(
            "fetched %s (%d objects, %.1f MiB) in %.2fs",
            source_uri,
            len(objects),
            sum(obj.size for obj in objects) / MiB,
            time.monotonic() - started,
        )
        return entry / name

    def _part_jobs(
        self,
        client: S3Client,
        bucket: str,
        objects: list[_Object],
        files: Mapping[str, Path],
    ) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
        jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        for obj in objects:
            path = files[obj.relative]
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as handle:
                handle.truncate(obj.size)  # parts then write at their offsets, in any order
            if obj.size == 0:
                continue
            if obj.size <= self.part_size:
                jobs.append((_fetch_range, (client, bucket, obj, path, 0, None)))
                continue
            for start in range(0, obj.size, self.part_size):
                end = min(start + self.part_size, obj.size) - 1
                jobs.append((_fetch_range, (client, bucket, obj, path, start, end)))
        return jobs

    @staticmethod
    def _run_all(
        pool: ThreadPoolExecutor, jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[Any]:
        """Results in order; on the first failure, cancel what has not started and raise it."""
        futures: list[Future[Any]] = [pool.submit(fn, *args) for fn, args in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future in done and (exc := future.exception()) is not None:
                raise exc
        return [future.result() for future in futures]


def _fetch_range(
    client: S3Client, bucket: str, obj: _Object, path: Path, start: int, end: int | None
) -> None:
    """GET the whole object (end None) or bytes start..end inclusive, written at `start`."""
    # IfMatch: every part must come from the same version of the object as the listing.
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": obj.key, "IfMatch": obj.etag}
    if end is not None:
        kwargs["Range"] = f"bytes={start}-{end}"
    expected = (obj.size if end is None else end + 1) - start
    try:
        response = client.get_object(**kwargs)
    except ClientError as exc:
        if _is_not_found(exc):
            raise ModelNotFound(f"s3://{bucket}/{obj.key} disappeared during download") from exc
        raise
    written = 0
    with path.open("r+b") as handle:
        handle.seek(start)
        for chunk in response["Body"].iter_chunks(_CHUNK):
            handle.write(chunk)
            written += len(chunk)
    if written != expected:
        raise ModelIntegrityError(
            f"s3://{bucket}/{obj.key} bytes {start}-{end}: got {written} bytes, not {expected}"
        )


def _seal(path: Path) -> str:
    """fsync (a renamed entry must survive a host crash whole) and hash one downloaded file."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
    return file_sha256(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- pushing and the CLI ----------------------------------------------------------------------


def s3_client_from_env(*, max_pool_connections: int = DEFAULT_MAX_WORKERS + 2) -> S3Client:
    """An S3 client from SDSAAS_S3_ENDPOINT_URL, SDSAAS_AWS_REGION and the default credentials."""
    import boto3
    from botocore.config import Config

    client: S3Client = boto3.client(
        "s3",
        endpoint_url=os.environ.get("SDSAAS_S3_ENDPOINT_URL") or None,
        region_name=os.environ.get("SDSAAS_AWS_REGION") or "us-east-1",
        config=Config(max_pool_connections=max_pool_connections, retries={"mode": "standard"}),
    )
    return client


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
        uploads = {f"{prefix}{rel}": file for rel, file in sorted(_folder_files(path).items())}
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
            if not _is_not_found(exc):
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


if __name__ == "__main__":
    sys.exit(main())
