from __future__ import annotations

from collections.abc import Iterable

import factory
from rest_framework.test import APIClient

from jobs.models import DiffusionModel, Family, LoraAdapter, Upload, public_id
from tenants.models import Plan, Tenant
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
    """An upload row; the object in S3 is the test's to write when it needs the bytes."""

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


def api_client_for(tenant: Tenant, scopes: Iterable[str] | None = None) -> APIClient:
    _, plaintext = api_key_issue(tenant=tenant, scopes=scopes)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client
