"""The slash commands the bot offers, as registered with Discord (PUT /applications/{id}/commands).

`/imagine prompt:<text>` with options; `model` and `lora` are autocompleted from the tenant's
catalog. The option names are read back from the interactions (services/imagine).
"""

from __future__ import annotations

from typing import Any

from sdsaas.contract import MAX_STEPS_CEILING, SEED_MAX

IMAGINE = "imagine"
# Discord's application command option types.
STRING, INTEGER = 3, 4
# Sizes offered, width x height: squares and the common portrait and landscape shapes.
SIZES = ("512x512", "768x768", "1024x1024", "512x768", "768x512", "832x1216", "1216x832")
PROMPT_MAX_CHARS = 1000


def size_parse(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)


def command_definitions() -> list[dict[str, Any]]:
    return [
        {
            "name": IMAGINE,
            "type": 1,  # CHAT_INPUT
            "description": "Generate an image from a prompt",
            "options": [
                {
                    "name": "prompt",
                    "type": STRING,
                    "description": "What to draw",
                    "required": True,
                    "max_length": PROMPT_MAX_CHARS,
                },
                {
                    "name": "negative_prompt",
                    "type": STRING,
                    "description": "What to keep out of the image",
                    "max_length": PROMPT_MAX_CHARS,
                },
                {
                    "name": "model",
                    "type": STRING,
                    "description": "The model (default: the first one allowed)",
                    "autocomplete": True,
                },
                {
                    "name": "size",
                    "type": STRING,
                    "description": "Width x height in pixels",
                    "choices": [{"name": size, "value": size} for size in SIZES],
                },
                {
                    "name": "steps",
                    "type": INTEGER,
                    "description": "Denoising steps",
                    "min_value": 1,
                    "max_value": MAX_STEPS_CEILING,
                },
                {
                    "name": "seed",
                    "type": INTEGER,
                    "description": "The same seed gives the same image",
                    "min_value": 0,
                    "max_value": SEED_MAX,
                },
                {
                    "name": "lora",
                    "type": STRING,
                    "description": "A LoRA adapter of the model",
                    "autocomplete": True,
                },
            ],
        }
    ]
