"""gpu_worker.build_model's LoRA: a real adapter file, loaded and applied by the inference code."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from gpu_worker import inference
from gpu_worker.build_model import build_lora

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loras") / "style.safetensors"
    build_lora("tiny", out, seed=0)
    return out


def pixels(model: inference.LoadedModel, loras: tuple[tuple[str, str, float], ...]) -> np.ndarray:
    request = inference.Request(
        prompt="a red fox",
        negative_prompt="",
        width=64,
        height=64,
        steps=2,
        guidance=7.0,
        scheduler="ddim",
        num_outputs=1,
        seed=7,
        loras=loras,
    )
    return np.asarray(inference.generate(model, request)[0])


def test_lora_file_is_one_safetensors_in_diffusers_layout_the_same_for_a_seed(
    tmp_path: Path, lora: Path
) -> None:
    # given the LoRA written with seed 0
    # when it is written again with seed 0, and with seed 1
    again = build_lora("tiny", tmp_path / "again.safetensors", seed=0)
    other = build_lora("tiny", tmp_path / "other.safetensors", seed=1)

    # then the same seed gives the same bytes, and the returned digest is the file's sha256
    assert again == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert other != again
    # and it holds UNet and text encoder LoRA pairs under diffusers' prefixes, none of them zero
    with safe_open(str(lora), "pt") as handle:
        keys = list(handle.keys())
        tensors = [handle.get_tensor(key) for key in keys]
        assert "lora_adapter_metadata" in handle.metadata()
    assert {key.split(".")[0] for key in keys} == {"unet", "text_encoder"}
    assert all(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in keys)
    assert any(".attn2.to_k.lora_A" in key for key in keys)
    assert all(tensor.abs().sum() > 0 for tensor in tensors)


def test_lora_changes_pixels_by_its_weight_and_repeats_exactly(
    tiny_model_dir: Path, lora: Path
) -> None:
    # given the tiny pipeline, loaded as a worker loads it
    model = inference.LoadedModel(inference.load_pipeline(str(tiny_model_dir), CPU))
    style = ("style", str(lora))

    # when the same request runs without the LoRA, with it at 1.0, at 0.0, at 1.0 again and
    # without it again (a worker serves jobs with and without LoRAs in any order)
    plain = pixels(model, ())
    full = pixels(model, ((*style, 1.0),))
    zero = pixels(model, ((*style, 0.0),))
    full_again = pixels(model, ((*style, 1.0),))
    plain_again = pixels(model, ())

    # then the LoRA changes the image, weight 0 and no LoRA give the same one, and each repeat
    # is pixel-identical: an adapter loaded once is switched on and off, not left behind
    assert not np.array_equal(full, plain)
    assert np.array_equal(zero, plain)
    assert np.array_equal(full_again, full)
    assert np.array_equal(plain_again, plain)
    assert dict(model.adapters) == {"style": str(lora)}


def test_a_lora_whose_file_changed_in_the_catalog_is_loaded_anew(
    tiny_model_dir: Path, lora: Path, tmp_path: Path
) -> None:
    # given a worker that served the LoRA "style" from one file
    model = inference.LoadedModel(inference.load_pipeline(str(tiny_model_dir), CPU))
    first = pixels(model, (("style", str(lora), 1.0),))
    # when the catalog points "style" at another file (another revision of the adapter)
    other = tmp_path / "style-v2.safetensors"
    build_lora("tiny", other, seed=5)
    second = pixels(model, (("style", str(other), 1.0),))
    # then the new weights are used, as a fresh worker would use them
    fresh = inference.LoadedModel(inference.load_pipeline(str(tiny_model_dir), CPU))
    assert not np.array_equal(first, second)
    assert np.array_equal(second, pixels(fresh, (("style", str(other), 1.0),)))
    assert dict(model.adapters) == {"style": str(other)}


def test_idle_loras_beyond_the_bound_are_unloaded_least_recently_used_first(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a bound of 1 idle LoRA, and three LoRA files
    monkeypatch.setattr(inference, "MAX_IDLE_ADAPTERS", 1)
    files = []
    for seed in range(3):
        files.append(tmp_path / f"l{seed}.safetensors")
        build_lora("tiny", files[-1], seed=seed)
    model = inference.LoadedModel(inference.load_pipeline(str(tiny_model_dir), CPU))
    # when jobs use a, then b, then c, one at a time
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        for slug, path in zip("abc", files, strict=True):
            pixels(model, ((slug, str(path), 1.0),))
    # then c (in use) and b (the most recent idle one) stay loaded; a was unloaded
    # (and peft's warning of a second adapter, which is meant, did not reach the log)
    assert not [w for w in warned if "peft_config" in str(w.message)]
    assert list(model.adapters) == ["b", "c"]
    loaded = {name for names in model.pipeline.get_list_adapters().values() for name in names}
    assert loaded == {"b", "c"}
