"""gpu_worker.model_store against the real S3 API (moto_server): fetch, verify, cache."""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from django.conf import settings
from safetensors.torch import load_file, save_file

from gpu_worker import inference, loading
from gpu_worker.model_store import (
    ModelIntegrityError,
    ModelNotFound,
    ModelStore,
    ModelStoreError,
    digest,
    push,
)
from sdsaas.contract import ModelRef
from tests.support.model_store import PART, read_folder, write_folder


class GetRecorder:
    """Every GetObject the client sends (its Range and IfMatch, or None) and the threads that
    sent them."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        self.if_match: list[str | None] = []
        self.threads: set[int] = set()
        self.before: Any = None  # an extra hook for one test: a barrier, a delay, a failure

    def __call__(self, params: dict[str, Any], **kwargs: Any) -> None:
        self.ranges.append(params.get("Range"))
        self.if_match.append(params.get("IfMatch"))
        self.threads.add(threading.get_ident())
        if self.before is not None:
            self.before()


@pytest.fixture
def gets(s3: Any) -> Iterator[GetRecorder]:
    recorder = GetRecorder()
    s3.meta.events.register("provide-client-params.s3.GetObject", recorder)
    yield recorder
    s3.meta.events.unregister("provide-client-params.s3.GetObject", recorder)


def byte_span(range_header: str | None, size: int) -> tuple[int, int]:
    """`bytes=A-B` -> (A, B); an open end (`bytes=A-`, s3transfer's last part) is the last byte."""
    assert range_header is not None and range_header.startswith("bytes=")
    start, end = range_header.removeprefix("bytes=").split("-")
    return int(start), int(end) if end else size - 1


def cache_entries(cache_dir: Path) -> list[str]:
    """What a lookup could take for a hit: everything but the lock and temp folders."""
    return sorted(p.name for p in cache_dir.iterdir() if p.name not in (".locks", ".tmp"))


# --- S3 folders -----------------------------------------------------------------------------


def test_pushed_folder_comes_back_byte_identical_with_the_catalog_digest(
    tmp_path: Path, s3: Any, store: ModelStore, dest: str
) -> None:
    # given a folder pushed to S3
    files = write_folder(tmp_path / "src")
    source_uri, sha256 = push(s3, tmp_path / "src", dest)

    # when a worker asks for it
    path = store.local_path(source_uri, sha256)

    # then it gets a folder in the cache, with the same files and the same digest
    assert source_uri == dest
    assert path.parent == store.cache_dir / sha256
    assert read_folder(path) == files
    assert digest(path) == sha256


def test_tiny_pipeline_from_s3_loads(
    tiny_model_dir: Path, s3: Any, store: ModelStore, dest: str
) -> None:
    # given the real tiny pipeline pushed to S3
    source_uri, sha256 = push(s3, tiny_model_dir, dest)

    # when it is fetched and loaded like the worker does
    path = store.local_path(source_uri, sha256)
    pipeline = inference.load_pipeline(str(path), torch.device("cpu"))

    # then the downloaded folder is a working diffusers pipeline, byte for byte the built one
    assert read_folder(path) == read_folder(tiny_model_dir)
    assert pipeline.unet.config.sample_size == 8
    assert digest(tiny_model_dir) == sha256


def test_large_object_is_fetched_with_parallel_ranged_gets(
    tmp_path: Path, s3: Any, store: ModelStore, gets: GetRecorder, dest: str
) -> None:
    # given a ~1 MB object (not a multiple of the 64 KiB part size)
    data = os.urandom(1_000_003)
    (tmp_path / "big.safetensors").write_bytes(data)
    source_uri, sha256 = push(s3, tmp_path / "big.safetensors", dest)
    # and the first 4 GETs must all be in flight at once, or the barrier breaks
    barrier = threading.Barrier(4, timeout=10)
    first = iter(range(4))
    gets.before = lambda: next(first, None) is not None and barrier.wait()

    # when it is fetched
    path = store.local_path(source_uri, sha256)

    # then one ranged GET per part covers every byte once, from 4 threads, and the copy is exact
    assert len(gets.ranges) == math.ceil(len(data) / PART)
    spans = sorted(byte_span(r, len(data)) for r in gets.ranges)
    assert spans[0][0] == 0 and spans[-1][1] == len(data) - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))
    assert len(gets.threads) == 4
    assert path.read_bytes() == data
    assert digest(path) == sha256
    # and every part was asked of the version that was listed, so no two versions mix
    etag = s3.head_object(Bucket=settings.S3_BUCKET, Key=f"{dest.split('/', 3)[3]}big.safetensors")
    assert gets.if_match == [etag["ETag"]] * len(gets.ranges)


def test_a_cached_copy_that_went_bad_is_fetched_again_when_it_fails_to_load(
    tiny_model_dir: Path, s3: Any, store: ModelStore, dest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the tiny pipeline fetched from S3 once, then one of its weight files damaged on disk
    source_uri, sha256 = push(s3, tiny_model_dir, dest)
    path = store.local_path(source_uri, sha256)
    damaged = next(path.rglob("*.safetensors"))
    damaged.chmod(0o644)
    damaged.write_bytes(b"\0" * 64)
    monkeypatch.setattr(loading, "MODEL_STORE", store)
    # when a job loads the model, then it loads: the copy was found bad and fetched again
    model = ModelRef(f"tiny-{sha256[:8]}-damaged", "sd15", source_uri, "r1", sha256)
    assert loading.load_model(model, torch.device("cpu")).pipeline.unet.config.sample_size == 8
    assert digest(store.local_path(source_uri, sha256)) == sha256
    # and a sound copy that fails to load for another reason is kept
    assert not store.discard_if_corrupt(source_uri, sha256)


def test_second_call_is_a_cache_hit_even_from_a_new_store_and_with_s3_emptied(
    tmp_path: Path, s3: Any, store: ModelStore, cache_dir: Path, gets: GetRecorder, dest: str
) -> None:
    # given a model fetched once, then deleted from S3
    write_folder(tmp_path / "src")
    source_uri, sha256 = push(s3, tmp_path / "src", dest)
    first = store.local_path(source_uri, sha256)
    downloads = len(gets.ranges)
    bucket = settings.S3_BUCKET
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=dest.split("/", 3)[3])["Contents"]:
        s3.delete_object(Bucket=bucket, Key=item["Key"])

    # when it is asked for again, by this store and by a new one (another worker process)
    again = store.local_path(source_uri, sha256)
    other = ModelStore(cache_dir, lambda: s3, part_size=PART).local_path(source_uri, sha256)

    # then both get the cached copy without a single GET
    assert again == other == first
    assert len(gets.ranges) == downloads


def test_wrong_hash_raises_integrity_error_and_caches_nothing(
    tmp_path: Path, s3: Any, store: ModelStore, cache_dir: Path, dest: str
) -> None:
    # given a pushed folder and a catalog row with another hash
    write_folder(tmp_path / "src")
    source_uri, sha256 = push(s3, tmp_path / "src", dest)
    wrong = hashlib.sha256(b"something else").hexdigest()

    # when a worker asks for it
    with pytest.raises(ModelIntegrityError, match=wrong):
        store.local_path(source_uri, wrong)

    # then neither an entry nor a temp folder is left, and the right hash still works
    assert cache_entries(cache_dir) == []
    assert list((cache_dir / ".tmp").iterdir()) == []
    assert digest(store.local_path(source_uri, sha256)) == sha256


def test_missing_prefix_object_or_bucket_is_model_not_found(store: ModelStore, dest: str) -> None:
    # given sources with nothing behind them
    sha256 = "a" * 64
    missing = [dest, f"{dest}tiny", f"{dest}lora.safetensors", "s3://no-such-bucket-ms/m/"]

    for source_uri in missing:
        # when a worker asks for each one
        with pytest.raises(ModelNotFound):
            store.local_path(source_uri, sha256)

    # then nothing was cached
    assert cache_entries(store.cache_dir) == []


def test_s3_source_without_a_hash_is_refused_before_any_request(
    store: ModelStore, gets: GetRecorder, dest: str
) -> None:
    # given a catalog row with an S3 source and no hash
    # when a worker asks for it
    with pytest.raises(ModelStoreError, match="no sha256"):
        store.local_path(dest, "")

    # then S3 was not asked
    assert gets.ranges == []


def test_leftover_of_a_crashed_download_is_not_a_hit(
    tmp_path: Path, s3: Any, store: ModelStore, gets: GetRecorder, dest: str
) -> None:
    # given a model and a half-written temp folder left by a download that died
    files = write_folder(tmp_path / "src")
    source_uri, sha256 = push(s3, tmp_path / "src", dest)
    leftover = store.tmp_dir / f"{sha256}-crashed" / "src"
    leftover.mkdir(parents=True)
    (leftover / "model_index.json").write_bytes(files["model_index.json"])

    # when a worker asks for the model
    path = store.local_path(source_uri, sha256)

    # then it downloaded a full copy and removed the leftover
    assert len(gets.ranges) > 0
    assert read_folder(path) == files
    assert not leftover.parent.exists()


def test_download_failing_midway_leaves_no_entry_and_the_next_call_completes(
    tmp_path: Path, s3: Any, store: ModelStore, gets: GetRecorder, dest: str
) -> None:
    # given a model whose download breaks from the third GET on (a connection that stays down:
    # a part that fails once is retried by s3transfer, see the next test)
    files = write_folder(tmp_path / "src")
    source_uri, sha256 = push(s3, tmp_path / "src", dest)
    calls = iter(range(1000))

    def fail_from_third() -> None:
        if next(calls) >= 2:
            raise ConnectionResetError("connection dropped mid-download")

    gets.before = fail_from_third

    # when the worker asks for it, and asks again after the error
    with pytest.raises(ConnectionResetError):
        store.local_path(source_uri, sha256)
    entries_after_failure = cache_entries(store.cache_dir)
    gets.before = None
    path = store.local_path(source_uri, sha256)

    # then the failure left no entry, and the retry gives the full model
    assert entries_after_failure == []
    assert len(list(store.tmp_dir.iterdir())) == 0
    assert read_folder(path) == files


def test_connection_dropped_once_is_retried_and_the_download_completes(
    tmp_path: Path, s3: Any, store: ModelStore, gets: GetRecorder, dest: str
) -> None:
    # given a model whose third GET meets a dropped connection, once
    files = write_folder(tmp_path / "src")
    source_uri, sha256 = push(s3, tmp_path / "src", dest)
    calls = iter(range(1000))

    def fail_third() -> None:
        if next(calls) == 2:
            raise ConnectionResetError("connection dropped mid-download")

    gets.before = fail_third

    # when the worker asks for it
    path = store.local_path(source_uri, sha256)

    # then only that GET was sent again, and the copy is complete and verified
    small_files = 2  # model_index.json, unet/config.json; vae/empty.txt needs no GET
    assert len(gets.ranges) == small_files + math.ceil((3 * PART + 123) / PART) + 1
    assert read_folder(path) == files
    assert path.parent == store.cache_dir / sha256


def test_object_key_escaping_the_prefix_is_refused(
    tmp_path: Path, s3: Any, store: ModelStore, dest: str
) -> None:
    # given a prefix holding a key with ".." in it
    bucket, prefix = settings.S3_BUCKET, dest.split("/", 3)[3]
    s3.put_object(Bucket=bucket, Key=f"{prefix}unet/../../escaped.txt", Body=b"x")

    # when a worker asks for it
    with pytest.raises(ModelStoreError, match="unsafe object key"):
        store.local_path(dest, "b" * 64)

    # then nothing was written anywhere in the cache
    assert not list(store.cache_dir.rglob("escaped.txt"))
    assert cache_entries(store.cache_dir) == []


# --- S3 single files (LoRAs) ------------------------------------------------------------------


def test_single_file_lora_source_comes_back_as_that_file(
    tmp_path: Path, s3: Any, store: ModelStore, dest: str
) -> None:
    # given a LoRA-like safetensors file pushed as one object
    lora = tmp_path / "pytorch_lora_weights.safetensors"
    save_file({"lora_A.weight": torch.randn(4, 32), "lora_B.weight": torch.randn(32, 4)}, lora)
    source_uri, sha256 = push(s3, lora, dest)

    # when a worker asks for it
    path = store.local_path(source_uri, sha256)

    # then it gets the file itself, under its name, exact and loadable
    assert source_uri == f"{dest}pytorch_lora_weights.safetensors"
    assert sha256 == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert path == store.cache_dir / sha256 / "pytorch_lora_weights.safetensors"
    assert path.read_bytes() == lora.read_bytes()
    assert set(load_file(path)) == {"lora_A.weight", "lora_B.weight"}


# --- concurrency ------------------------------------------------------------------------------


def test_four_threads_asking_at_once_download_once(
    tmp_path: Path, s3: Any, cache_dir: Path, gets: GetRecorder, dest: str
) -> None:
    # given a model, and GETs slow enough that the threads surely overlap
    files = write_folder(tmp_path / "src")
    source_uri, sha256 = push(s3, tmp_path / "src", dest)
    gets.before = lambda: time.sleep(0.05)
    barrier = threading.Barrier(4)

    def worker(_: int) -> Path:
        # One store each, as separate worker processes would have; the file lock is shared.
        store = ModelStore(cache_dir, lambda: s3, part_size=PART, max_workers=2)
        barrier.wait()
        return store.local_path(source_uri, sha256)

    # when 4 threads ask for it at the same moment
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(worker, range(4)))

    # then all get the same complete copy, and each part was fetched once
    small_files = 2  # model_index.json, unet/config.json; vae/empty.txt needs no GET
    assert len(set(paths)) == 1
    assert read_folder(paths[0]) == files
    assert len(gets.ranges) == small_files + math.ceil((3 * PART + 123) / PART)


# --- local sources ----------------------------------------------------------------------------


def test_local_folder_is_used_in_place_with_or_without_a_hash(
    tmp_path: Path, store: ModelStore
) -> None:
    # given a local folder and its digest
    write_folder(tmp_path / "m")
    sha256 = digest(tmp_path / "m")

    # when it is named by path, by file:// URI, and with no hash
    by_path = store.local_path(str(tmp_path / "m"), sha256)
    by_uri = store.local_path((tmp_path / "m").as_uri(), sha256.upper())
    unverified = store.local_path(str(tmp_path / "m"), "")

    # then it is used where it is, never copied
    assert by_path == by_uri == unverified == tmp_path / "m"
    assert not store.cache_dir.exists()


def test_local_source_with_wrong_hash_missing_or_relative_is_refused(
    tmp_path: Path, store: ModelStore
) -> None:
    # given a local folder
    write_folder(tmp_path / "m")

    # when it is named with a wrong hash, or a missing or relative path is named
    # then each is a final error
    with pytest.raises(ModelIntegrityError):
        store.local_path(str(tmp_path / "m"), "c" * 64)
    with pytest.raises(ModelNotFound):
        store.local_path(str(tmp_path / "absent"), "")
    with pytest.raises(ModelStoreError, match="absolute"):
        store.local_path("var/models/tiny", "")
    with pytest.raises(ModelStoreError, match="64 hex"):
        store.local_path(str(tmp_path / "m"), "../../etc")
