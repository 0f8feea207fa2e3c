"""The admin pages of jobs: the job list's search and filters, the cancel action, and the job
page (images, metrics, timeline)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.request import urlopen

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.signals import setting_changed
from django.test import Client
from django.utils.timezone import localtime

from jobs.models import DiffusionModel, Job, JobEvent, LoraAdapter
from jobs.services.submit import job_submit
from tenants.models import CreditPeriod
from tests.support.admin import World, admin_url, page_messages
from tests.support.aws import LocalAws
from tests.support.factories import TenantFactory
from tests.support.images import image_bytes


class Page(HTMLParser):
    """What a page shows, as a browser reads it: images (with the link around each) and the
    body rows of each table that has a class, as cell texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[dict[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._link = ""
        self._table = ""
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "a":
            self._link = attr.get("href", "")
        elif tag == "img":
            self.imgs.append({**attr, "link": self._link})
        elif tag == "table" and attr.get("class"):
            self._table = attr["class"]
            self.tables[self._table] = []
        elif tag == "tbody" and self._table:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._in_body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._link = ""
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_page(response: Any) -> Page:
    assert response.status_code == 200
    page = Page()
    page.feed(response.content.decode())
    return page


@pytest.mark.django_db
def test_search_and_filters_of_the_job_list(world: World, staff: Client) -> None:
    # given another tenant's job besides the world's three
    other = TenantFactory()
    theirs, _ = job_submit(tenant=other, data={"model": "tiny", "prompt": "a blue heron"})
    url = admin_url(Job, "changelist")
    queries: list[tuple[dict[str, Any], set[Job]]] = [
        ({"status": "queued"}, {world.queued}),
        ({"status__exact": "succeeded"}, {world.succeeded}),
        ({"kind__exact": "img2img"}, {world.starting}),
        ({"tenant__id__exact": other.pk}, {theirs}),
        (
            {"model__id__exact": world.succeeded.model_id},
            {world.succeeded, world.starting, world.queued, theirs},
        ),
        ({"q": world.starting.public_id}, {world.starting}),
    ]
    for params, expected in queries:
        # when the job list is filtered
        response = staff.get(url, params)
        # then it loads and lists exactly the matching jobs
        assert response.status_code == 200, params
        listed = set(response.context["cl"].result_list)
        assert listed == expected, params


@pytest.mark.django_db
def test_a_job_page_shows_its_event_history_once(world: World, staff: Client) -> None:
    # when the succeeded job's page is opened
    response = staff.get(admin_url(Job, "change", world.succeeded.pk))
    # then its events are in the timeline, in order, and there is no second (inline) view of them
    kinds = [row[2] for row in parse_page(response).tables["job-timeline"]]
    assert kinds == ["created", "admitted", "succeeded"]
    assert response.context["inline_admin_formsets"] == []


# --- actions -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_action_cancels_a_queued_job_and_releases_its_credit(
    world: World, staff: Client
) -> None:
    # given a queued job holding one reserved credit
    reserved = CreditPeriod.objects.get(tenant=world.tenant).reserved
    # when the superuser runs "cancel" on it from the job list
    response = staff.post(
        admin_url(Job, "changelist"),
        {"action": "cancel", "_selected_action": [world.queued.pk]},
        follow=True,
    )
    # then it is canceled, with an event, and its credit is released; the others are untouched
    assert response.status_code == 200
    world.queued.refresh_from_db()
    assert world.queued.status == Job.Status.CANCELED
    assert world.queued.events.filter(kind="canceled").exists()
    assert CreditPeriod.objects.get(tenant=world.tenant).reserved == reserved - 1
    assert Job.objects.get(pk=world.starting.pk).status == Job.Status.STARTING
    assert Job.objects.get(pk=world.succeeded.pk).status == Job.Status.SUCCEEDED


@pytest.mark.django_db
def test_cancel_action_on_a_finished_job_warns_and_changes_nothing(
    world: World, staff: Client
) -> None:
    # given a succeeded job
    used = CreditPeriod.objects.get(tenant=world.tenant).used
    # when "cancel" is run on it
    response = staff.post(
        admin_url(Job, "changelist"),
        {"action": "cancel", "_selected_action": [world.succeeded.pk]},
        follow=True,
    )
    # then a warning names it, and it stays succeeded with its usage
    assert response.status_code == 200
    assert any(world.succeeded.public_id in m for m in page_messages(response))
    world.succeeded.refresh_from_db()
    assert world.succeeded.status == Job.Status.SUCCEEDED
    assert CreditPeriod.objects.get(tenant=world.tenant).used == used


@pytest.mark.django_db
def test_a_live_job_cannot_be_deleted_so_its_credit_cannot_leak(
    world: World, staff: Client
) -> None:
    # given a queued job and a starting job, which hold reserved credits
    reserved = CreditPeriod.objects.get(tenant=world.tenant).reserved
    assert reserved == 2
    for job in (world.queued, world.starting):
        # when the superuser opens its delete page, or deletes it from the list
        page = staff.get(admin_url(Job, "delete", job.pk))
        staff.post(
            admin_url(Job, "changelist"),
            {"action": "delete_selected", "_selected_action": [job.pk], "post": "yes"},
        )
        # then deleting is refused and the job is still there, holding its credit
        assert page.status_code == 403
        assert Job.objects.filter(pk=job.pk).exists()
    assert CreditPeriod.objects.get(tenant=world.tenant).reserved == reserved


@pytest.mark.django_db
def test_a_model_or_lora_keeps_its_slug_and_a_lora_is_disabled_not_deleted(
    world: World, staff: Client
) -> None:
    # given a model and a LoRA, which queued jobs name by slug
    for model in (DiffusionModel, LoraAdapter):
        obj = world.objects[model]
        # when the superuser opens its page, then its slug is shown, not editable
        page = staff.get(admin_url(model, "change", obj.pk)).context["adminform"]
        assert "slug" not in page.form.fields and "slug" in page.readonly_fields
    # and a LoRA cannot be deleted, only disabled
    lora = world.objects[LoraAdapter]
    assert staff.get(admin_url(LoraAdapter, "delete", lora.pk)).status_code == 403
    assert (
        "enabled"
        in staff.get(admin_url(LoraAdapter, "change", lora.pk)).context["adminform"].form.fields
    )


# --- the job page --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_job_page_shows_its_images_as_thumbnails_that_download(
    world: World, staff: Client, local_aws: LocalAws
) -> None:
    # given a succeeded job whose two output PNGs are in the bucket
    job = world.succeeded
    pngs = [image_bytes("PNG", (8, 8), (200, 30, 30)), image_bytes("PNG", (8, 8), (30, 30, 200))]
    keys = [
        default_storage.save(
            f"tenants/{world.tenant.pk}/jobs/{job.public_id}/{i}.png", ContentFile(data)
        )
        for i, data in enumerate(pngs)
    ]
    Job.objects.filter(pk=job.pk).update(output_keys=keys)
    # when its page is opened
    page = parse_page(staff.get(admin_url(Job, "change", job.pk)))
    # then it shows two lazy thumbnails, in order, each linking to its full image
    assert [img["alt"] for img in page.imgs] == keys
    for img, data in zip(page.imgs, pngs, strict=True):
        assert img["loading"] == "lazy"
        assert img["link"] == img["src"]
        # and each is a presigned URL that downloads that very PNG
        assert "Signature=" in img["src"]
        with urlopen(img["src"], timeout=10) as answer:
            assert answer.read() == data


@pytest.mark.django_db
def test_an_img2img_job_page_shows_its_input_image(
    world: World, staff: Client, local_aws: LocalAws
) -> None:
    # given an img2img job whose uploaded input is in the bucket, and no outputs yet
    job = world.starting
    data = image_bytes("PNG", (8, 8), (10, 200, 30))
    default_storage.save(job.init_image_key, ContentFile(data))
    # when its page is opened
    response = staff.get(admin_url(Job, "change", job.pk))
    # then the input is the one thumbnail, and it downloads the uploaded bytes
    (img,) = parse_page(response).imgs
    assert img["alt"] == job.init_image_key
    with urlopen(img["src"], timeout=10) as answer:
        assert answer.read() == data
    assert "No images." in response.content.decode()


@pytest.mark.django_db
def test_a_job_without_outputs_says_so(world: World, staff: Client) -> None:
    # when a queued txt2img job's page is opened
    response = staff.get(admin_url(Job, "change", world.queued.pk))
    # then there is no image on it, and it says there are none
    assert parse_page(response).imgs == []
    assert "No images." in response.content.decode()


@pytest.mark.django_db
def test_the_timeline_lists_a_preempted_jobs_events_in_order(world: World, staff: Client) -> None:
    # given a job preempted on its first attempt that succeeded on its second
    job = world.starting
    job.events.all().delete()
    history: list[tuple[float, str, int, dict[str, Any]]] = [
        (0.0, "created", 0, {}),
        (0.1, "admitted", 0, {}),
        (2.0, "started", 1, {"load_s": 0.5}),
        (5.0, "preempted", 1, {"reason": "sigterm"}),
        (7.5, "started", 2, {"load_s": 0.25}),
        (12.3, "succeeded", 2, {}),
    ]
    for offset, kind, attempt, detail in history:
        event = JobEvent.objects.create(job=job, kind=kind, attempt=attempt, detail=detail)
        at = job.created_at + timedelta(seconds=offset)
        JobEvent.objects.filter(pk=event.pk).update(created_at=at)
    # when its page is opened
    page = parse_page(staff.get(admin_url(Job, "change", job.pk)))
    # then each event is a row, in order: time, time since the job was created, kind, attempt
    # and detail
    rows = page.tables["job-timeline"]
    assert [row[1:] for row in rows] == [
        ["+0.0 s", "created", "0", ""],
        ["+0.1 s", "admitted", "0", ""],
        ["+2.0 s", "started", "1", "load_s=0.5"],
        ["+5.0 s", "preempted", "1", "reason=sigterm"],
        ["+7.5 s", "started", "2", "load_s=0.25"],
        ["+12.3 s", "succeeded", "2", ""],
    ]
    for row, (offset, *_) in zip(rows, history, strict=True):
        at = localtime(job.created_at + timedelta(seconds=offset))
        assert at.strftime("%Y-%m-%d %H:%M:%S") in row[0]


@pytest.mark.django_db
def test_the_metrics_table_shows_each_phase_in_seconds(world: World, staff: Client) -> None:
    # given a finished job with the worker's timings (upload_s garbled) and its timestamps
    job = world.succeeded
    Job.objects.filter(pk=job.pk).update(
        metrics={"load_s": 0.5, "inference_s": 1.234, "encode_s": 0.056, "upload_s": "n/a"},
        started_at=job.created_at + timedelta(seconds=3.5),
        completed_at=job.created_at + timedelta(seconds=9.87),
    )
    # when its page is opened
    page = parse_page(staff.get(admin_url(Job, "change", job.pk)))
    # then each phase is shown in seconds with two decimals, and what is not a number as missing
    assert page.tables["job-metrics"] == [
        ["queue_s", "3.50"],
        ["load_s", "0.50"],
        ["inference_s", "1.23"],
        ["encode_s", "0.06"],
        ["upload_s", "—"],
        ["total_s", "9.87"],
    ]
    # and a queued job has every one missing
    queued = parse_page(staff.get(admin_url(Job, "change", world.queued.pk)))
    assert [value for _, value in queued.tables["job-metrics"]] == ["—"] * 6


@pytest.mark.django_db
def test_markup_in_an_event_is_shown_as_text(world: World, staff: Client) -> None:
    # given an event whose kind and detail carry markup (details can quote a tenant's input)
    script = "<script>alert(1)</script>"
    JobEvent.objects.create(
        job=world.queued,
        kind="<img src=x onerror=alert(2)>",
        attempt=0,
        detail={"n": ["<b>"], script: script},
    )
    # when the job's page is opened
    response = staff.get(admin_url(Job, "change", world.queued.pk))
    page = parse_page(response)
    # then none of it is markup on the page, and it reads as it was written
    assert script not in response.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.content.decode()
    assert page.imgs == []
    assert page.tables["job-timeline"][-1][2:] == [
        "<img src=x onerror=alert(2)>",
        "0",
        f'{script}={script}, n=["<b>"]',
    ]


@pytest.mark.django_db
def test_every_job_field_is_on_the_job_page_once(world: World, staff: Client) -> None:
    # when a job's page is opened
    response = staff.get(admin_url(Job, "change", world.succeeded.pk))
    # then each model field is in exactly one of its sections
    names = [
        name for _, options in response.context["adminform"].fieldsets for name in options["fields"]
    ]
    model_fields = [f.name for f in Job._meta.fields]
    assert sorted(name for name in names if name in model_fields) == sorted(model_fields)


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[None]:
    """No credentials anywhere boto looks (nor the EC2 metadata service), with a fresh storage."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    rebuild_storage()
    yield
    monkeypatch.undo()
    rebuild_storage()


def rebuild_storage() -> None:
    # The storage keeps its boto session: have Django build it again to see the environment.
    setting_changed.send(sender=None, setting="STORAGES", value=settings.STORAGES, enter=True)


@pytest.mark.django_db
def test_the_job_page_renders_when_image_links_cannot_be_signed(
    world: World, staff: Client, no_aws_credentials: None
) -> None:
    # given a succeeded img2img job, and a storage without credentials
    Job.objects.filter(pk=world.succeeded.pk).update(init_image_key=world.starting.init_image_key)
    # when its page is opened
    response = staff.get(admin_url(Job, "change", world.succeeded.pk))
    # then it still renders, with no image, the reason instead, and the rest of the page
    page = parse_page(response)
    assert page.imgs == []
    assert (
        response.content.decode().count("Cannot make image links: Unable to locate credentials")
        == 2
    )
    assert [row[2] for row in page.tables["job-timeline"]] == ["created", "admitted", "succeeded"]
