"""Prompt embeddings of any length: split into the text encoders' windows, never truncated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

Pipeline: TypeAlias = StableDiffusionPipeline | StableDiffusionXLPipeline


@dataclass(frozen=True)
class PromptEmbeds:
    """What one image is conditioned on; the pooled pair only for SDXL."""

    positive: torch.Tensor  # (1, 77 * windows, features)
    negative: torch.Tensor  # the same shape
    pooled: torch.Tensor | None = None  # (1, projection)
    negative_pooled: torch.Tensor | None = None

    def pipeline_kwargs(self, copies: int) -> dict[str, torch.Tensor]:
        kwargs = {
            "prompt_embeds": self.positive.repeat(copies, 1, 1),
            "negative_prompt_embeds": self.negative.repeat(copies, 1, 1),
        }
        if self.pooled is not None and self.negative_pooled is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled.repeat(copies, 1)
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled.repeat(copies, 1)
        return kwargs


def _text_encoders(pipeline: Pipeline) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs, in the order the UNet takes their features."""
    pairs = [(pipeline.tokenizer, pipeline.text_encoder)]
    if isinstance(pipeline, StableDiffusionXLPipeline):
        pairs.append((pipeline.tokenizer_2, pipeline.text_encoder_2))
    return pairs


def _windows(tokenizer: Any, text: str) -> list[list[int]]:
    """The text's token ids in windows of 75: with BOS and EOS, what one encoder pass takes."""
    window = tokenizer.model_max_length - 2
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    return [ids[i : i + window] for i in range(0, len(ids), window)] or [[]]


def _token_rows(
    tokenizer: Any, windows: list[list[int]], count: int, device: torch.device
) -> torch.Tensor:
    """`count` rows of input ids: each window wrapped in BOS/EOS and padded, then empty ones."""
    rows = []
    for piece in windows + [[] for _ in range(count - len(windows))]:
        row = [tokenizer.bos_token_id, *piece, tokenizer.eos_token_id]
        rows.append(row + [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(row)))
    return torch.tensor(rows, device=device)


def encode_prompts(pipeline: Pipeline, prompt: str, negative: str) -> PromptEmbeds:
    """Embed a prompt and a negative prompt of any length: split, never truncated.

    A text encoder sees at most 77 positions, so each text is cut into 75-token windows, each
    wrapped in BOS/EOS and encoded on its own, and the windows' embeddings are concatenated;
    the shorter text gets empty windows, since guidance needs both the same length.

    SDXL, as diffusers' own `encode_prompt`: both encoders' penultimate hidden states side by
    side, and the pooled projection of `text_encoder_2` (from the first window, which holds
    what a prompt of up to 75 tokens would have given). An empty negative prompt gives zeros
    instead where the model's config sets `force_zeros_for_empty_prompt` (SDXL base does).
    """
    xl = isinstance(pipeline, StableDiffusionXLPipeline)
    zero_negative = xl and not negative.strip() and pipeline.config.force_zeros_for_empty_prompt
    texts = [prompt] if zero_negative else [prompt, negative]
    encoders = _text_encoders(pipeline)
    windows = [[_windows(tokenizer, text) for text in texts] for tokenizer, _ in encoders]
    count = max(len(per_text) for per_encoder in windows for per_text in per_encoder)
    features = []
    with torch.no_grad():
        for (tokenizer, encoder), per_encoder in zip(encoders, windows, strict=True):
            rows = [_token_rows(tokenizer, w, count, encoder.device) for w in per_encoder]
            output = encoder(torch.cat(rows), output_hidden_states=xl)
            states = output.hidden_states[-2] if xl else output[0]
            features.append(states.reshape(len(texts), -1, states.shape[-1]))
        if xl:  # the last encoder's, as in diffusers: SDXL's only one with a projection
            pooled = output.text_embeds.reshape(len(texts), count, -1)[:, 0]
    embeds = torch.cat(features, dim=-1)
    if not xl:
        return PromptEmbeds(embeds[:1], embeds[1:])
    if zero_negative:
        return PromptEmbeds(embeds, torch.zeros_like(embeds), pooled, torch.zeros_like(pooled))
    return PromptEmbeds(embeds[:1], embeds[1:], pooled[:1], pooled[1:])
