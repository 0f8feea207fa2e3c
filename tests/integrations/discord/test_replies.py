"""A reply follows its job on Discord: progress edits (at most every 2 s), the final edit with the
image, and past the interaction token's 15 minutes a channel message with the bot token."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from integrations.discord.models import DiscordApplication, DiscordReply, HandledInteraction
from integrations.discord.render import job_render
from integrations.discord.services.replies import (
    handled_interactions_prune,
    on_job_state_change,
    replies_dispatch,
)
from integrations.discord.services.sync import message_delete, reply_sync
from integrations.discord.tokens import token_encrypt
from jobs import selectors as job_selectors
from jobs.announcements import JobStateChange
from jobs.models import Job
from sdsaas.broker.sqs import discord_queue_name
from sdsaas.contract import TASK_DISCORD_REPLY_SYNC
from tests.support.discord import DiscordApp
from tests.support.discord_api import FakeDiscord
from tests.support.factories import JobFactory
from tests.support.images import image_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("local_aws")]

TOKEN = "itoken-123"
ORIGINAL = rf"/webhooks/\d+/{TOKEN}/messages/@original"
CHANNEL = "222222222222222222"


def reply_for(application: DiscordApplication, **job_fields: Any) -> DiscordReply:
    job = JobFactory(tenant=application.tenant, **job_fields)
    return DiscordReply.objects.create(  # type: ignore[no-any-return]
        application=application,
        job=job,
        interaction_id="1",
        token_encrypted=token_encrypt(TOKEN),
        token_expires_at=timezone.now() + dt.timedelta(minutes=15),
        guild_id="111111111111111111",
        channel_id=CHANNEL,
        user_id="333333333333333333",
        changed_at=timezone.now(),
    )


def succeed(job: Job, image: bytes) -> None:
    key = f"tenants/{job.tenant_id}/jobs/{job.public_id}/0.png"
    default_storage.save(key, ContentFile(image))
    job.status, job.output_keys = Job.Status.SUCCEEDED, [key]
    job.save()
    changed(job)


def changed(job: Job) -> None:
    on_job_state_change(
        JobStateChange(job.pk, job.public_id, job.tenant_id, job.status, 1, timezone.now())
    )


def test_progress_then_the_result_with_its_image_attached_and_its_buttons(
    application: DiscordApplication, fake_discord: FakeDiscord
) -> None:
    # given a reply to a job that is processing
    reply = reply_for(application, status=Job.Status.PROCESSING, progress_step=5)
    # when it is synced, and again once the job succeeded
    assert reply_sync(reply_pk=reply.pk) == "edited"
    image = image_bytes(size=(64, 64))
    succeed(reply.job, image)
    assert reply_sync(reply_pk=reply.pk) == "edited"
    # then the deferred reply was edited twice: progress, then the image as files[0]
    progress, final = fake_discord.calls_to("PATCH", ORIGINAL)
    assert "5/20 steps" in progress.json["content"]
    assert f"seed `{reply.job.input['seed']}`" in final.json["content"]
    assert "model `tiny`" in final.json["content"]
    assert final.files["files[0]"][1] == image
    assert final.json["attachments"][0]["filename"] == f"{reply.job.public_id}.png"
    labels = [b["label"] for b in final.json["components"][0]["components"]]
    assert labels == ["🔁 Re-roll", "Vary (subtle)", "Vary (strong)", "🗑 Delete"]
    assert final.json["allowed_mentions"] == {"parse": []}
    reply.refresh_from_db()
    assert reply.done and reply.message_id


def test_progress_is_edited_at_most_every_interval_and_the_final_state_is_not_held_back(
    application: DiscordApplication, fake_discord: FakeDiscord
) -> None:
    reply = reply_for(application, status=Job.Status.PROCESSING, progress_step=1)
    assert reply_sync(reply_pk=reply.pk) == "edited"
    Job.objects.filter(pk=reply.job_id).update(progress_step=2)
    changed(reply.job)
    assert reply_sync(reply_pk=reply.pk) == "held back"
    reply.refresh_from_db()
    assert reply.retry_at == reply.edited_at + dt.timedelta(seconds=2)
    succeed(reply.job, image_bytes(size=(32, 32)))
    assert reply_sync(reply_pk=reply.pk) == "edited"
    assert len(fake_discord.calls_to("PATCH", ORIGINAL)) == 2


def test_an_unchanged_reply_is_not_sent_again(
    application: DiscordApplication, fake_discord: FakeDiscord, settings: Any
) -> None:
    settings.DISCORD_EDIT_INTERVAL_S = 0
    reply = reply_for(application, status=Job.Status.QUEUED)
    assert reply_sync(reply_pk=reply.pk) == "edited"
    DiscordReply.objects.filter(pk=reply.pk).update(changed_at=timezone.now())
    assert reply_sync(reply_pk=reply.pk) == "unchanged"
    assert len(fake_discord.calls_to("PATCH", ORIGINAL)) == 1


def test_past_the_tokens_15_minutes_the_result_is_posted_to_the_channel_with_the_bot_token(
    application: DiscordApplication, fake_discord: FakeDiscord, discord_app: DiscordApp
) -> None:
    # given a reply shown while queued, whose token then expired (the clock moved 16 minutes)
    reply = reply_for(application, status=Job.Status.QUEUED)
    reply_sync(reply_pk=reply.pk)
    reply.refresh_from_db()
    DiscordReply.objects.filter(pk=reply.pk).update(
        token_expires_at=timezone.now() - dt.timedelta(minutes=1)
    )
    # when the job succeeds
    succeed(reply.job, image_bytes(size=(32, 32)))
    assert reply_sync(reply_pk=reply.pk) == "posted to the channel"
    # then the image went to the channel as a reply to the original, with the bot token
    [post] = fake_discord.calls_to("POST", rf"/channels/{CHANNEL}/messages")
    assert post.headers["authorization"] == f"Bot {discord_app.bot_token}"
    assert post.json["message_reference"]["message_id"] == reply.message_id
    assert post.json["allowed_mentions"] == {"parse": [], "users": [reply.user_id]}
    assert "files[0]" in post.files
    assert len(fake_discord.calls_to("PATCH", ORIGINAL)) == 1  # only the queued edit
    reply.refresh_from_db()
    assert reply.done and reply.channel_message_id


def test_a_token_refused_early_falls_back_to_the_channel_for_the_result(
    application: DiscordApplication, fake_discord: FakeDiscord
) -> None:
    reply = reply_for(application, status=Job.Status.QUEUED)
    fake_discord.expire_token(TOKEN)
    succeed(reply.job, image_bytes(size=(32, 32)))
    assert reply_sync(reply_pk=reply.pk) == "posted to the channel"
    assert len(fake_discord.calls_to("POST", rf"/channels/{CHANNEL}/messages")) == 1


def test_progress_past_the_token_is_dropped_not_posted(
    application: DiscordApplication, fake_discord: FakeDiscord
) -> None:
    reply = reply_for(application, status=Job.Status.PROCESSING)
    DiscordReply.objects.filter(pk=reply.pk).update(token_expires_at=timezone.now())
    assert reply_sync(reply_pk=reply.pk) == "token expired: progress not shown"
    assert fake_discord.calls == []


def test_a_discord_outage_is_retried_with_backoff_and_then_shown(
    application: DiscordApplication, fake_discord: FakeDiscord
) -> None:
    reply = reply_for(application, status=Job.Status.QUEUED)
    succeed(reply.job, image_bytes(size=(32, 32)))
    fake_discord.fail_next("PATCH", ORIGINAL, 503)
    assert reply_sync(reply_pk=reply.pk).startswith("retry in 2 s")
    reply.refresh_from_db()
    assert reply.failures == 1 and not reply.done and reply.retry_at
    assert replies_dispatch(reply_ids=[reply.pk]) == 0  # not before retry_at
    assert reply_sync(reply_pk=reply.pk) == "edited"
    reply.refresh_from_db()
    assert reply.done and reply.failures == 0


def test_a_rate_limit_longer_than_the_wait_is_retried_after_discords_retry_after(
    application: DiscordApplication, fake_discord: FakeDiscord
) -> None:
    reply = reply_for(application, status=Job.Status.QUEUED)
    fake_discord.fail_next(
        "PATCH", ORIGINAL, 429, body={"message": "slow", "retry_after": 30.0, "global": False}
    )
    before = timezone.now()
    assert reply_sync(reply_pk=reply.pk).startswith("retry in 30 s")
    reply.refresh_from_db()
    assert reply.retry_at and reply.retry_at >= before + dt.timedelta(seconds=30)


def test_an_image_over_the_attachment_limit_is_an_embed_with_its_url(
    application: DiscordApplication, fake_discord: FakeDiscord, settings: Any
) -> None:
    settings.DISCORD_ATTACHMENT_MAX_BYTES = 16
    reply = reply_for(application, status=Job.Status.QUEUED)
    succeed(reply.job, image_bytes(size=(256, 256)))
    reply_sync(reply_pk=reply.pk)
    [final] = fake_discord.calls_to("PATCH", ORIGINAL)
    assert final.files == {}
    assert final.json["embeds"][0]["image"]["url"].startswith("http")


def test_a_state_change_marks_only_the_jobs_own_reply_out_of_date(
    application: DiscordApplication,
) -> None:
    mine = reply_for(application, status=Job.Status.PROCESSING)
    other = reply_for(application, status=Job.Status.PROCESSING)
    DiscordReply.objects.update(synced_at=timezone.now() + dt.timedelta(seconds=1))
    later = timezone.now() + dt.timedelta(seconds=5)
    on_job_state_change(
        JobStateChange(mine.job_id, "job_x", application.tenant_id, "processing", 1, later, (1, 2))
    )
    mine.refresh_from_db()
    other.refresh_from_db()
    assert mine.changed_at == later and other.changed_at < later


def test_delete_removes_the_message_with_the_bot_token_once(
    application: DiscordApplication, fake_discord: FakeDiscord
) -> None:
    done = message_delete(application_pk=application.pk, channel_id=CHANNEL, message_id="77")
    assert done == "deleted"
    fake_discord.fail_next("DELETE", rf"/channels/{CHANNEL}/messages/77", 404)
    again = message_delete(application_pk=application.pk, channel_id=CHANNEL, message_id="77")
    assert again == "already deleted"


def test_the_sweep_sends_each_reply_out_of_date_and_free_once(
    application: DiscordApplication, local_aws: Any
) -> None:
    # given replies: never synced, synced since their change, leased now, leased long ago,
    # waiting to be retried later
    now = timezone.now()
    new = reply_for(application, status=Job.Status.PROCESSING)
    synced = reply_for(application, status=Job.Status.PROCESSING)
    DiscordReply.objects.filter(pk=synced.pk).update(synced_at=now + dt.timedelta(seconds=1))
    leased = reply_for(application, status=Job.Status.PROCESSING)
    DiscordReply.objects.filter(pk=leased.pk).update(sending_since=now)
    stale = reply_for(application, status=Job.Status.PROCESSING)
    DiscordReply.objects.filter(pk=stale.pk).update(sending_since=now - dt.timedelta(minutes=3))
    later = reply_for(application, status=Job.Status.PROCESSING)
    DiscordReply.objects.filter(pk=later.pk).update(retry_at=now + dt.timedelta(seconds=30))
    # when the sweep runs
    sent = replies_dispatch(now=now)
    # then the new and the stale one were sent to the discord queue, nothing else
    assert sent == 2
    tasks = local_aws.drain_tasks(discord_queue_name())
    assert sorted(t["kwargs"]["reply_pk"] for t in tasks) == sorted([new.pk, stale.pk])
    assert {t["task"] for t in tasks} == {TASK_DISCORD_REPLY_SYNC}


def test_the_sweep_looks_again_at_replies_of_queued_jobs_for_their_position(
    application: DiscordApplication, local_aws: Any
) -> None:
    # given a queued job's reply shown 11 s ago, and a processing job's reply shown as long ago
    now = timezone.now()
    queued = reply_for(application, status=Job.Status.QUEUED)
    running = reply_for(application, status=Job.Status.PROCESSING)
    shown = now - dt.timedelta(seconds=11)
    DiscordReply.objects.update(changed_at=shown, synced_at=shown)
    # when a new reply is handed over, nothing else is looked at; when the sweep runs, the
    # queued job's reply is due again (its position may have moved), the other is not
    assert replies_dispatch(reply_ids=[queued.pk, running.pk], now=now) == 0
    assert replies_dispatch(now=now) == 1
    [task] = local_aws.drain_tasks(discord_queue_name())
    assert task["kwargs"] == {"reply_pk": queued.pk}


def test_handled_interaction_ids_are_forgotten_after_a_day(application: DiscordApplication) -> None:
    old = HandledInteraction.objects.create(interaction_id="1", application=application)
    HandledInteraction.objects.filter(pk=old.pk).update(
        received_at=timezone.now() - dt.timedelta(days=1, minutes=1)
    )
    recent = HandledInteraction.objects.create(interaction_id="2", application=application)
    assert handled_interactions_prune() == 1
    assert list(HandledInteraction.objects.values_list("pk", flat=True)) == [recent.pk]


@pytest.mark.django_db
def test_a_queued_job_s_reply_says_how_many_are_ahead_and_a_capped_count_as_a_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given three queued jobs of one tenant
    first = JobFactory(status=Job.Status.QUEUED)
    jobs = [first] + [
        JobFactory(status=Job.Status.QUEUED, tenant=first.tenant, model=first.model)
        for _ in range(2)
    ]

    def shown(job: Job) -> str:
        return str(job_render(job=job, user_id="42").payload["content"])

    # then the first is next and the last has two ahead
    assert "🕒 Queued (next)" in shown(jobs[0])
    assert "🕒 Queued (2 ahead)" in shown(jobs[2])
    # and a count that reached the cap says so: at least that many ahead
    monkeypatch.setattr(job_selectors, "QUEUE_POSITION_CAP", 1)
    assert "🕒 Queued (1+ ahead)" in shown(jobs[2])
