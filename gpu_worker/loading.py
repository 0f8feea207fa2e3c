"""Models and LoRAs on a GPU worker: downloaded and verified once (model_store), loaded once
per process and kept in memory while they fit (inference.PipelineCache)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from django.conf import settings

from gpu_worker import acceleration, inference, model_store
from sdsaas.contract import LoraRef, ModelRef

MODEL_STORE = model_store.ModelStore(settings.GPU_MODEL_CACHE_DIR, model_store.s3_client_from_env)
CACHE = inference.PipelineCache(max_bytes=settings.GPU_PIPELINE_CACHE_BYTES)
# The speed-ups applied to each pipeline loaded (gpu_worker/acceleration.py); parsed here, at
# the worker's start, so a typo fails then.
OPTIMIZATIONS = acceleration.parse(settings.GPU_OPTIMIZATIONS)


def local_copy(source_uri: str, sha256: str) -> str:
    """A local path of a model or LoRA, downloaded and verified once if it lives in S3."""
    try:
        return str(MODEL_STORE.local_path(source_uri, sha256))
    except model_store.ModelStoreError as exc:  # missing or corrupt: retrying gives the same
        raise inference.InvalidRequest(str(exc)) from exc


def load_model(model: ModelRef, device: torch.device) -> inference.LoadedModel:
    # The weights themselves, not only the catalog's label for them: an entry whose source or
    # hash was changed under the same revision must not be served the old weights from memory.
    key = f"{model.slug}@{model.revision}:{model.sha256 or model.source_uri}"
    cached = CACHE.lookup(key)
    if cached is not None:
        return cached
    for last_try in (False, True):
        path = local_copy(model.source_uri, model.sha256)
        if not (Path(path) / "model_index.json").is_file():
            raise inference.InvalidRequest(f"no diffusers pipeline at {model.source_uri}")
        try:
            loaded, _ = CACHE.get(
                key,
                partial(
                    inference.load_pipeline,
                    path,
                    device,
                    OPTIMIZATIONS,
                    compile_cache_dir=settings.GPU_COMPILE_CACHE_DIR,
                ),
                expected_bytes=inference.weights_bytes(path),
            )
            return loaded
        except Exception as exc:
            # A copy that went bad on this host would fail every job of the model here: it is
            # downloaded again, once, if it no longer holds what the catalog names.
            if last_try or inference.out_of_memory(exc):
                raise
            if not MODEL_STORE.discard_if_corrupt(model.source_uri, model.sha256):
                raise
    raise AssertionError("unreachable: the last try returns or raises")


def local_loras(loras: tuple[LoraRef, ...]) -> inference.LoraFiles:
    """(slug, local path, weight) of each LoRA of the job."""
    return tuple(
        (lora.slug, local_copy(lora.source_uri, lora.sha256), float(lora.weight)) for lora in loras
    )
