from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import factory
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.models import DiffusionModel, Family, Job, LoraAdapter, Upload, public_id
from sdsaas.contract import GenerationInput, Scheduler
from tenants.models import Plan, Tenant, month_of
from tenants.services import api_key_issue


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan

    name = factory.Sequence(lambda n: f"plan-{n}")
    monthly_credits = 1000
    max_concurrent_jobs = 2
    requests_per_minute = 1000
    max_pixels = 1024 * 1024
    max_steps = 150


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"tenant-{n}")
    plan = factory.SubFactory(PlanFactory)


class DiffusionModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DiffusionModel
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"model-{n}")
    name = factory.LazyAttribute(lambda o: o.slug)
    family = Family.SD15
    source_uri = factory.LazyAttribute(lambda o: f"s3://sdsaas-models/{o.slug}/")
    revision = "r1"
    min_side = 64
    max_side = 1024
    default_width = 512
    default_height = 512
    default_steps = 20


class LoraFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LoraAdapter

    slug = factory.Sequence(lambda n: f"lora-{n}")
    name = factory.LazyAttribute(lambda o: o.slug)
    family = Family.SD15
    source_uri = factory.LazyAttribute(lambda o: f"s3://sdsaas-models/loras/{o.slug}/")


class UploadFactory(factory.django.DjangoModelFactory):
    """An upload row only; `stored_upload` writes its object in S3 too."""

    class Meta:
        model = Upload

    public_id = factory.LazyFunction(lambda: public_id("upl"))
    storage_key = factory.LazyAttribute(
        lambda o: f"tenants/{o.tenant.pk}/uploads/{o.public_id}.png"
    )
    content_type = "image/png"
    width = 512
    height = 512
    size_bytes = 2048
    sha256 = "0" * 64


def stored_upload(content: bytes, **fields: Any) -> Upload:
    """An upload row and its object in S3 holding `content` (the test needs `local_aws`).

    `content` need not be an image: a test can store what no upload would have let in.
    """
    upload: Upload = UploadFactory(
        size_bytes=len(content), sha256=hashlib.sha256(content).hexdigest(), **fields
    )
    assert default_storage.save(upload.storage_key, ContentFile(content)) == upload.storage_key
    return upload


def resolved_input(model: DiffusionModel, **fields: Any) -> dict[str, Any]:
    """A txt2img input as job_submit stores it: the model's defaults, a fixed seed, `fields`."""
    generation = GenerationInput(
        prompt="a paper boat",
        width=model.default_width,
        height=model.default_height,
        steps=model.default_steps,
        guidance=model.default_guidance,
        scheduler=Scheduler(model.default_scheduler),
        num_outputs=1,
        seed=7,
    )
    return {**generation.to_wire(), **fields}


class JobFactory(factory.django.DjangoModelFactory):
    """A job row as job_submit writes it, without what the submit does besides: no event, no
    admission, no publish, and no credits reserved in the tenant's credit period.

    For tests that need jobs to list, read or show; a test of what submitting does submits.
    """

    class Meta:
        model = Job

    public_id = factory.LazyFunction(lambda: public_id("job"))
    tenant = factory.SubFactory(TenantFactory)
    model = factory.SubFactory(DiffusionModelFactory, slug="tiny")
    kind = Job.Kind.TXT2IMG
    status = Job.Status.QUEUED
    input = factory.LazyAttribute(lambda o: resolved_input(o.model))
    credits_reserved = factory.LazyAttribute(lambda o: o.input["num_outputs"])
    credit_month = factory.LazyFunction(lambda: month_of(timezone.now()))


def api_client_for(tenant: Tenant, scopes: Iterable[str] | None = None) -> APIClient:
    _, plaintext = api_key_issue(tenant=tenant, scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client
