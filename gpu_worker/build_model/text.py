"""The text side of a pipeline: the byte-level tokenizer and the CLIP text encoders built for it."""

from __future__ import annotations

from typing import Any

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from gpu_worker.build_model.specs import Arch


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-level alphabet (the GPT-2 mapping), so any text tokenizes without merges."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def byte_level_tokenizer() -> CLIPTokenizer:
    alphabet = list(_bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate([*alphabet, *(c + "</w>" for c in alphabet)])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(text: dict[str, Any], tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **text,
    )


def text_encoders(spec: Arch) -> dict[str, CLIPTextModel]:
    """The text encoders by component name, each built for the byte-level tokenizer."""
    tokenizer = byte_level_tokenizer()
    return {
        name: spec.text_encoder_class(i)(_text_config(text, tokenizer))
        for i, (name, text) in enumerate(zip(spec.text_names, spec.text, strict=True))
    }
