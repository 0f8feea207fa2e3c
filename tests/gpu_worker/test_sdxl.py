"""SDXL through the SD 1.5 code path: the tiny-xl pipeline built locally, loaded and run on CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from PIL import Image
from safetensors import safe_open
from transformers import CLIPTextModelWithProjection

from gpu_worker import inference
from gpu_worker.build_model import ARCHS, build, build_lora

CPU = torch.device("cpu")
REQUEST = inference.Request(
    prompt="a red fox in the snow",
    negative_prompt="blurry",
    width=64,
    height=64,
    steps=2,
    guidance=7.0,
    scheduler="euler",
    num_outputs=1,
    seed=7,
)


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-xl"
    build("tiny-xl", out)
    return out


@pytest.fixture(scope="module")
def model(tiny_xl: Path) -> inference.LoadedModel:
    return inference.LoadedModel(inference.load_pipeline(str(tiny_xl), CPU))


def pixels(model: inference.LoadedModel, request: inference.Request) -> np.ndarray:
    return np.asarray(inference.generate(model, request)[0])


def test_tiny_xl_is_a_few_mb_and_loads_as_an_sdxl_pipeline(
    tiny_xl: Path, model: inference.LoadedModel
) -> None:
    # given the tiny-xl folder written by the builder
    # when it is loaded as a worker loads any model (the `model` fixture)
    pipeline = model.pipeline

    # then it is small, an SDXL pipeline by its model_index.json, with SDXL's two encoders
    size = sum(f.stat().st_size for f in tiny_xl.rglob("*") if f.is_file())
    assert size < 20 * 1024 * 1024
    assert json.loads((tiny_xl / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionXLPipeline"
    )
    assert isinstance(pipeline, StableDiffusionXLPipeline)
    assert isinstance(pipeline.text_encoder_2, CLIPTextModelWithProjection)
    # and the UNet's inputs fit the encoders: hidden states side by side, and "text_time"
    # conditioning on six size numbers plus the second encoder's pooled projection
    unet = pipeline.unet.config
    hidden = pipeline.text_encoder.config.hidden_size + pipeline.text_encoder_2.config.hidden_size
    assert unet.cross_attention_dim == hidden
    assert unet.addition_embed_type == "text_time"
    assert unet.projection_class_embeddings_input_dim == (
        6 * unet.addition_time_embed_dim + pipeline.text_encoder_2.config.projection_dim
    )


def test_sdxl_arch_has_the_real_base_model_shapes() -> None:
    # given the full-size sdxl architecture
    spec = ARCHS["sdxl"]

    # when its UNet is built on the meta device (shapes only: no memory, no time)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**spec.unet_config())

    # then it is SDXL base 1.0's UNet, parameter for parameter
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert unet.config.cross_attention_dim == 768 + 1280
    assert unet.config.projection_class_embeddings_input_dim == 2816
    assert spec.pipeline is StableDiffusionXLPipeline


def test_txt2img_gives_the_asked_size_and_the_seed_decides_the_pixels(
    model: inference.LoadedModel,
) -> None:
    # given the loaded tiny-xl model
    # when the same request runs twice, then with another seed, then at another size
    first = pixels(model, REQUEST)
    again = pixels(model, REQUEST)
    other_seed = pixels(model, replace(REQUEST, seed=8))
    wide = inference.generate(model, replace(REQUEST, width=96, num_outputs=2))

    # then the images have the asked size, and only the seed changes the pixels
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    assert [image.size for image in wide] == [(96, 64), (96, 64)]


def test_prompt_longer_than_77_tokens_is_encoded_whole_not_truncated(
    model: inference.LoadedModel,
) -> None:
    # given a prompt of more than 77 tokens, and the text of its first 75 (what an encoder
    # that truncates would see between BOS and EOS): five-letter words, five tokens each with
    # the byte-level tokenizer, so the cut falls between two words
    tokenizer = model.pipeline.tokenizer
    words = ["snowy", "foxes", "leaps", "under", "amber", "skies", "while", "quiet", "pines"]
    long_prompt = " ".join(words * 3)
    short_prompt = " ".join((words * 3)[:15])
    ids = tokenizer(long_prompt, add_special_tokens=False).input_ids
    assert len(ids) > 77
    assert tokenizer(short_prompt, add_special_tokens=False).input_ids == ids[:75]

    # when both are encoded and generated with the same seed
    embeds = inference.encode_prompts(model.pipeline, long_prompt, "blurry")
    long_image = pixels(model, replace(REQUEST, prompt=long_prompt))
    short_image = pixels(model, replace(REQUEST, prompt=short_prompt))

    # then the long prompt took several 77-token windows, the negative was padded to as many,
    # and the tokens past the first 75 changed the image
    windows = -(-len(ids) // 75)
    assert embeds.positive.shape[1] == embeds.negative.shape[1] == 77 * windows
    assert embeds.pooled is not None and embeds.pooled.shape == (1, 48)
    assert not np.array_equal(long_image, short_image)


def test_short_prompts_are_encoded_exactly_as_diffusers_encodes_them(
    model: inference.LoadedModel,
) -> None:
    # given a prompt and a negative prompt that fit one window
    pipeline = model.pipeline

    # when our encoder and diffusers' own encode_prompt embed them, and an empty negative
    ours = inference.encode_prompts(pipeline, "a red fox", "blurry")
    theirs = pipeline.encode_prompt("a red fox", device=CPU, negative_prompt="blurry")
    ours_empty = inference.encode_prompts(pipeline, "a red fox", "")
    theirs_none = pipeline.encode_prompt("a red fox", device=CPU, negative_prompt=None)

    # then the hidden states and pooled projections are the same (an SDXL model is fed what it
    # was trained on), and an empty negative gives zeros, as diffusers does for SDXL base
    for mine, reference in (
        ((ours.positive, ours.negative, ours.pooled, ours.negative_pooled), theirs),
        (
            (
                ours_empty.positive,
                ours_empty.negative,
                ours_empty.pooled,
                ours_empty.negative_pooled,
            ),
            theirs_none,
        ),
    ):
        for tensor, expected in zip(mine, reference, strict=True):
            assert tensor is not None
            torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-5)
    assert ours_empty.negative.abs().sum() == 0


def test_empty_negative_is_encoded_when_the_model_does_not_force_zeros(tiny_xl: Path) -> None:
    # given the tiny-xl model loaded with `force_zeros_for_empty_prompt` off in its config
    pipeline = inference.load_pipeline(str(tiny_xl), CPU)
    pipeline.register_to_config(force_zeros_for_empty_prompt=False)

    # when a prompt is encoded with an empty negative prompt
    embeds = inference.encode_prompts(pipeline, "a red fox", "")

    # then the negative is the encoding of "", as diffusers gives for an explicit ""
    _, negative, _, negative_pooled = pipeline.encode_prompt(
        "a red fox", device=CPU, negative_prompt=""
    )
    assert embeds.negative.abs().sum() > 0
    torch.testing.assert_close(embeds.negative, negative, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embeds.negative_pooled, negative_pooled, rtol=1e-5, atol=1e-5)


def test_img2img_gives_the_asked_size_and_repeats_exactly(model: inference.LoadedModel) -> None:
    # given an init image of another size than the one asked
    init = Image.fromarray(pixels(model, REQUEST)).resize((80, 48))
    request = replace(REQUEST, init_image=init, strength=0.5, steps=4)

    # when img2img runs twice with the same seed, and once with another strength
    first = pixels(model, request)
    again = pixels(model, request)
    stronger = pixels(model, replace(request, strength=1.0))

    # then the output has the asked size, repeats exactly, and the strength matters
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, stronger)


def test_other_scheduler_runs_and_its_options_do_not_carry_over(
    model: inference.LoadedModel,
) -> None:
    # given an image made with the model's own scheduler (Euler)
    euler = pixels(model, REQUEST)

    # when a job with another scheduler (with Karras sigmas) runs, then Euler again
    karras = pixels(model, replace(REQUEST, scheduler="dpmpp_2m_karras"))
    euler_again = pixels(model, REQUEST)

    # then the other scheduler gives another image of the asked size, and the next Euler job
    # is built from the model's config, not the last job's: the same pixels as before
    assert karras.shape == (64, 64, 3)
    assert not np.array_equal(karras, euler)
    assert not model.pipeline.scheduler.config.use_karras_sigmas
    assert np.array_equal(euler_again, euler)


def test_sdxl_lora_reaches_the_unet_and_both_text_encoders(
    tmp_path: Path, model: inference.LoadedModel
) -> None:
    # given a LoRA written for tiny-xl
    lora = tmp_path / "xl-style.safetensors"
    build_lora("tiny-xl", lora, seed=0)
    with safe_open(str(lora), "pt") as handle:
        prefixes = {key.split(".")[0] for key in handle.keys()}  # noqa: SIM118

    # when the same request runs without it, with it at 1.0, at 0.0 and without it again
    plain = pixels(model, REQUEST)
    style = ("xl-style", str(lora))
    full = pixels(model, replace(REQUEST, loras=((*style, 1.0),)))
    zero = pixels(model, replace(REQUEST, loras=((*style, 0.0),)))
    plain_again = pixels(model, REQUEST)

    # then the file and the loaded adapter cover the UNet and both encoders, the LoRA changes
    # the image, and weight 0 or no LoRA give the plain one
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    assert model.pipeline.get_list_adapters() == {
        "unet": ["xl-style"],
        "text_encoder": ["xl-style"],
        "text_encoder_2": ["xl-style"],
    }
    assert not np.array_equal(full, plain)
    assert np.array_equal(zero, plain)
    assert np.array_equal(plain_again, plain)


def test_sd15_tiny_still_loads_as_a_stable_diffusion_pipeline(tmp_path: Path) -> None:
    # given the SD 1.5-shaped tiny model
    build("tiny", tmp_path / "tiny")

    # when it is loaded and run through the same functions
    model = inference.LoadedModel(inference.load_pipeline(str(tmp_path / "tiny"), CPU))
    image = pixels(model, replace(REQUEST, scheduler="ddim"))
    embeds = inference.encode_prompts(model.pipeline, "a red fox", "")

    # then it is the SD 1.5 class, with one encoder and no pooled embeddings
    assert type(model.pipeline) is StableDiffusionPipeline
    assert image.shape == (64, 64, 3)
    assert embeds.pooled is None
    assert embeds.negative.abs().sum() > 0  # SD 1.x encodes "" as diffusers does


@pytest.mark.parametrize(
    "index", [None, "not json", {"_class_name": "FluxPipeline"}, {"no": "class"}]
)
def test_folder_of_another_or_no_pipeline_class_is_an_invalid_request(
    tmp_path: Path, index: object
) -> None:
    # given a folder whose model_index.json is missing, unreadable, or names another class
    if index is not None:
        text = index if isinstance(index, str) else json.dumps(index)
        (tmp_path / "model_index.json").write_text(text)

    # when it is loaded, then the request is refused as final
    with pytest.raises(inference.InvalidRequest):
        inference.load_pipeline(str(tmp_path), CPU)
