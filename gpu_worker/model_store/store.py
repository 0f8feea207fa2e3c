"""`ModelStore`: an S3 source downloaded once into the cache, verified, then renamed into place.

The cache contract, the lock and the error classes are described in the package docstring.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from s3transfer.exceptions import RetriesExceededError
from s3transfer.futures import TransferFuture
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from gpu_worker.model_store.errors import ModelIntegrityError, ModelNotFound, ModelStoreError
from gpu_worker.model_store.hashing import digest, file_sha256, folder_digest
from gpu_worker.model_store.s3 import S3Object, is_not_found, list_source, parse_s3_uri

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
DEFAULT_MAX_WORKERS = 8
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelStore:
    """Resolves a catalog `source_uri` + `sha256` to a verified local path (see the package docs).

    `s3_client_factory` is called once per download, not per hit, so a worker whose models are
    cached or local never builds a client. The client is shared by `max_workers` threads: give
    it `max_pool_connections >= max_workers` (`s3_client_from_env` does). `part_size` is
    s3transfer's multipart threshold and chunk size, `max_workers` its `max_concurrency`.
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
        self.max_workers = max_workers
        self.transfer_config = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=max_workers,
        )
        # Local sources already hashed by this store: hashing GBs on every job would cost more
        # than the job. A race only hashes twice.
        self._verified_local: set[tuple[Path, str]] = set()

    def local_path(self, source_uri: str, sha256: str) -> Path:
        """A local file or folder holding exactly the weights the catalog names.

        Raises ModelNotFound, ModelIntegrityError or ModelStoreError (final), or a botocore
        error or OSError (transient). Safe to call from many threads and processes at once.
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

    def discard_if_corrupt(self, source_uri: str, sha256: str) -> bool:
        """After a cached copy of an S3 source failed to load: hash it again, and if it no longer
        holds what the catalog names (a disk fault, a hand's copy), remove it, so that the next
        `local_path` downloads it again. Whether it was removed. A hit is otherwise never hashed
        again (that would cost more than the job); a local source is its operator's, left as is.
        """
        expected = sha256.strip().lower()
        if not source_uri.startswith("s3://") or not _SHA256.fullmatch(expected):
            return False
        entry = self.cache_dir / expected
        with self._locked(expected):
            hit = self._hit(entry)
            if hit is None or digest(hit) == expected:
                return False
            logger.error("the cached copy of %s no longer matches its sha256: removed", source_uri)
            shutil.rmtree(entry)
            return True

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
        name, objects = list_source(client, source_uri)
        bucket, _ = parse_s3_uri(source_uri)
        tmp = Path(tempfile.mkdtemp(prefix=f"{expected}-", dir=self.tmp_dir))
        try:
            target = tmp / name
            single_file = len(objects) == 1 and objects[0].relative == ""
            files = {
                obj.relative: target / obj.relative if obj.relative else target for obj in objects
            }
            self._fetch_all(client, bucket, objects, files)
            # hashlib releases the GIL: the files of a folder hash on several cores at once.
            with ThreadPoolExecutor(self.max_workers, thread_name_prefix="model-store") as pool:
                file_hashes = dict(zip(files, pool.map(_seal, files.values()), strict=True))
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

    def _fetch_all(
        self, client: S3Client, bucket: str, objects: list[S3Object], files: Mapping[str, Path]
    ) -> None:
        """Every object to its path, parts and files in parallel through one s3transfer pool."""
        # s3transfer's own manager, not boto3's create_transfer_manager: with awscrt installed
        # that one picks the CRT client on "optimized" instance types (GPU ones among them),
        # whose transfers cannot be told a size or ETag.
        with TransferManager(client, self.transfer_config) as manager:
            futures: list[tuple[S3Object, TransferFuture]] = []
            for obj in objects:
                path = files[obj.relative]
                path.parent.mkdir(parents=True, exist_ok=True)
                if obj.size == 0:
                    path.touch()  # nothing to GET
                    continue
                future = manager.download(bucket, obj.key, str(path), subscribers=[_Listed(obj)])
                futures.append((obj, future))
            # Leaving the `with` by an exception cancels the other transfers and waits for their
            # threads, so nothing writes into the temp dir once it is removed.
            for obj, future in futures:
                _result(future, f"s3://{bucket}/{obj.key}")


class _Listed(BaseSubscriber):
    """Hands s3transfer the size and ETag the listing gave for an object."""

    def __init__(self, obj: S3Object) -> None:
        self.obj = obj

    def on_queued(self, future: TransferFuture, **kwargs: Any) -> None:
        # No HEAD per object, and every ranged GET then carries IfMatch with the listed ETag:
        # all parts come from the version that was listed, or the download fails.
        future.meta.provide_transfer_size(self.obj.size)
        future.meta.provide_object_etag(self.obj.etag)


def _result(future: TransferFuture, uri: str) -> None:
    try:
        future.result()
    except RetriesExceededError as exc:
        # s3transfer retried a part on a dropped or stalled stream and gave up: raise the network
        # error itself, which callers know as transient, not s3transfer's wrapper.
        raise exc.last_exception from exc
    except ClientError as exc:
        if is_not_found(exc):
            raise ModelNotFound(f"{uri} disappeared during download") from exc
        raise


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


def s3_client_from_env(*, max_pool_connections: int = DEFAULT_MAX_WORKERS + 2) -> S3Client:
    """An S3 client from SDSAAS_S3_ENDPOINT_URL, SDSAAS_AWS_REGION and the default credentials."""
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=os.environ.get("SDSAAS_S3_ENDPOINT_URL") or None,
        region_name=os.environ.get("SDSAAS_AWS_REGION") or "us-east-1",
        config=Config(max_pool_connections=max_pool_connections, retries={"mode": "standard"}),
    )
    return client
