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
  is a hit and S3 is not asked at all (it is content addressed: same hash, same bytes). It is
  not hashed again, except after it failed to load: `discard_if_corrupt` then removes it if
  its bytes changed on disk, and the next call downloads it anew (gpu_worker/loading.py).
- `.tmp/<sha256>-*` are downloads in progress or left by a dead process; never a hit, removed by
  the next download of that hash.
- `.locks/<sha256>.lock`: `flock` held while downloading, so threads and processes sharing the
  cache download a model once; the others wait, then take the hit. The kernel drops the lock
  when its holder dies. Nothing is evicted: size the disk for the models a pool serves.

Downloads go through boto3's transfer manager (s3transfer): objects of `part_size` or more in
ranged GETs of that size, up to `max_workers` GETs in flight across all files of a source.

Errors: `ModelStoreError` and its subclasses `ModelNotFound`, `ModelIntegrityError` are final
(retrying gives the same answer). S3 connection trouble and 5xx answers that outlast botocore's
and s3transfer's own retries propagate as botocore errors (`BotoCoreError`, `ClientError`) or as
the socket error itself (`OSError`): transient.

No Django here: the CLI and tests import it without settings.

The package, along that flow:
- errors.py: `ModelStoreError`, `ModelNotFound`, `ModelIntegrityError`;
- hashing.py: `file_sha256`, `folder_digest`, `digest`: the catalog digest, for store and push;
- s3.py: `parse_s3_uri` and the listing of the objects a source is made of;
- store.py: `ModelStore` (lock, download, verify, atomic rename) and `s3_client_from_env`;
- push.py, __main__.py: `push` and the CLI `main`.
"""

from gpu_worker.model_store.errors import ModelIntegrityError, ModelNotFound, ModelStoreError
from gpu_worker.model_store.hashing import digest, file_sha256, folder_digest
from gpu_worker.model_store.push import main, push
from gpu_worker.model_store.s3 import parse_s3_uri
from gpu_worker.model_store.store import (
    DEFAULT_MAX_WORKERS,
    DEFAULT_PART_SIZE,
    MiB,
    ModelStore,
    s3_client_from_env,
)

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_PART_SIZE",
    "MiB",
    "ModelIntegrityError",
    "ModelNotFound",
    "ModelStore",
    "ModelStoreError",
    "digest",
    "file_sha256",
    "folder_digest",
    "main",
    "parse_s3_uri",
    "push",
    "s3_client_from_env",
]
