"""What a reply shows: a job rendered as a Discord message payload, and the buttons of a result.

A button's custom id names what it does and the job it acts on (`reroll:<job>`,
`vary:<job>:<strength>`, `upscale:<job>`, `delete:<job>`); the click comes back as an
interaction carrying it (services/imagine).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage

from integrations.discord.client import Attachment
from jobs import selectors as job_selectors
from jobs.models import Job
from sdsaas.contract import OutputFormat

CONTENT_MAX_CHARS = 2000  # Discord's limit on a message's content
PROMPT_SHOWN_CHARS = 300
EPHEMERAL = 1 << 6
# Variations: img2img from the result at these strengths (how far it may move from it).
VARY_STRENGTHS = {"subtle": 0.35, "strong": 0.7}


@dataclass(frozen=True)
class ButtonAction:
    action: str  # reroll, vary, upscale, delete
    job_id: str
    strength: float | None = None


def custom_id(action: str, job_id: str, strength: float | None = None) -> str:
    return f"{action}:{job_id}" if strength is None else f"{action}:{job_id}:{strength}"


def custom_id_parse(value: str) -> ButtonAction | None:
    """The button's action; None for an id this version does not know."""
    parts = value.split(":")
    if len(parts) == 2 and parts[0] in ("reroll", "upscale", "delete"):
        return ButtonAction(parts[0], parts[1])
    if len(parts) == 3 and parts[0] == "vary":
        try:
            strength = float(parts[2])
        except ValueError:
            return None
        if strength in VARY_STRENGTHS.values():
            return ButtonAction("vary", parts[1], strength)
    return None


@dataclass(frozen=True)
class Rendered:
    payload: dict[str, Any]
    files: list[Attachment] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """Changes whenever what Discord would show changes (an unchanged one is not sent)."""
        hashed = hashlib.sha256(json.dumps(self.payload, sort_keys=True).encode())
        for attachment in self.files:
            hashed.update(hashlib.sha256(attachment.data).digest())
        return hashed.hexdigest()


def message(content: str, *, ephemeral: bool = False) -> dict[str, Any]:
    """A plain message payload that pings no one, whatever the text holds."""
    payload: dict[str, Any] = {
        "content": content[:CONTENT_MAX_CHARS],
        "allowed_mentions": {"parse": []},
    }
    if ephemeral:
        payload["flags"] = EPHEMERAL
    return payload


def _quoted(text: str) -> str:
    """User text shown safely: markdown escaped, cut to PROMPT_SHOWN_CHARS."""
    cut = text if len(text) <= PROMPT_SHOWN_CHARS else text[: PROMPT_SHOWN_CHARS - 1] + "…"
    for char in "\\*_~`|>":
        cut = cut.replace(char, "\\" + char)
    return cut.replace("\n", " ")


def job_render(*, job: Job, user_id: str, upscale_model: str = "") -> Rendered:
    """The reply as the job is now: waiting, progressing, its image with buttons, or why not."""
    head = f"**{_quoted(job.input['prompt'])}** — <@{user_id}>"
    status = job.status
    if status == Job.Status.QUEUED:
        position = job_selectors.job_queue_position(job=job)
        capped = position == job_selectors.QUEUE_POSITION_CAP
        ahead = f"{position}{'+' if capped else ''} ahead" if position else "next"
        return Rendered(message(f"{head}\n🕒 Queued ({ahead})"))
    if status == Job.Status.STARTING:
        return Rendered(message(f"{head}\n⏳ Starting on `{job.model.slug}`"))
    if status == Job.Status.PROCESSING:
        total = job.progress_total or int(job.input["steps"])
        percent = round(100 * job.progress_step / total) if total else 0
        bar = "▰" * (percent // 10) + "▱" * (10 - percent // 10)
        return Rendered(message(f"{head}\n🎨 {bar} {job.progress_step}/{total} steps"))
    if status == Job.Status.CANCELED:
        return Rendered(message(f"{head}\n🚫 Canceled"))
    if status == Job.Status.FAILED:
        return Rendered(message(f"{head}\n❌ Failed: {job.error_message or job.error_code}"))
    return _result(job=job, head=head, upscale_model=upscale_model)


def _result(*, job: Job, head: str, upscale_model: str) -> Rendered:
    spec = job.input
    details = (
        f"seed `{spec['seed']}` · model `{job.model.slug}` · {spec['width']}x{spec['height']}"
        f" · {spec['steps']} steps"
    )
    payload = message(f"{head}\n{details}")
    payload["components"] = [{"type": 1, "components": _buttons(job, upscale_model)}]
    key = job.output_keys[0]
    extension = OutputFormat(spec.get("output_format") or "png")
    with default_storage.open(key, "rb") as stored:
        data = stored.read(settings.DISCORD_ATTACHMENT_MAX_BYTES + 1)
    if len(data) > settings.DISCORD_ATTACHMENT_MAX_BYTES:
        urls = job_selectors.job_output_urls(job=job) or []
        payload["embeds"] = [
            {"title": "Full-size image", "url": urls[0], "image": {"url": urls[0]}}
        ]
        payload["attachments"] = []
        return Rendered(payload)
    filename = f"{job.public_id}.{extension.extension}"
    payload["attachments"] = [{"id": 0, "filename": filename}]
    payload["embeds"] = []
    return Rendered(payload, [Attachment(filename, data, extension.content_type)])


def _buttons(job: Job, upscale_model: str) -> list[dict[str, Any]]:
    def button(label: str, action: str, *, style: int = 2, strength: float | None = None) -> dict:
        return {
            "type": 2,
            "style": style,
            "label": label,
            "custom_id": custom_id(action, job.public_id, strength),
        }

    buttons = [button("🔁 Re-roll", "reroll")]
    buttons += [
        button(f"Vary ({name})", "vary", strength=strength)
        for name, strength in VARY_STRENGTHS.items()
    ]
    if upscale_model:
        buttons.append(button("⬆ Upscale x2", "upscale"))
    buttons.append(button("🗑 Delete", "delete", style=4))
    return buttons
