"""The Django admin as a site: every registered model's pages load, and each list page costs
the same number of queries whatever its length. The pages of jobs and tenants are tested in
tests/jobs/test_admin.py and tests/tenants/test_admin.py."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.db import connection
from django.db.models import Model
from django.test import Client
from django.test.utils import CaptureQueriesContext

from integrations.discord.models import DiscordApplication, DiscordReply
from integrations.webhooks.models import WebhookEndpoint, WebhookMessage
from jobs.models import DiffusionModel, Job, LoraAdapter, Upload
from jobs.services.lifecycle import job_mark_succeeded
from jobs.services.submit import job_submit
from tenants.models import ApiKey, CreditPeriod, Plan, Tenant, UsageRecord
from tenants.services import api_key_issue
from tests.support.admin import (
    World,
    admin_permits,
    admin_url,
    discord_application_with_reply,
    webhook_endpoint_with_message,
)
from tests.support.factories import (
    DiffusionModelFactory,
    LoraFactory,
    PlanFactory,
    TenantFactory,
    UploadFactory,
)

# Collected at import: pytest-django has set Django up, and the admin has autodiscovered.
REGISTERED: list[type[Model]] = sorted(admin.site._registry, key=lambda m: m._meta.label)


# --- every registered model ----------------------------------------------------------------------


def test_the_admin_registers_the_expected_models() -> None:
    # then every model an operator needs is there, and every registered one is covered below
    assert set(REGISTERED) == {
        Plan,
        Tenant,
        ApiKey,
        CreditPeriod,
        UsageRecord,
        DiffusionModel,
        LoraAdapter,
        Upload,
        Job,
        User,
        Group,
        WebhookEndpoint,
        WebhookMessage,
        DiscordApplication,
        DiscordReply,
    }


@pytest.mark.django_db
@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_changelist_add_and_change_pages_load(world: World, staff: Client, model) -> None:  # type: ignore[no-untyped-def]
    # given an existing object of the model
    obj = world.objects[model]
    # when the superuser opens its list, add and change pages
    changelist = staff.get(admin_url(model, "changelist"))
    add = staff.get(admin_url(model, "add"))
    change = staff.get(admin_url(model, "change", obj.pk))
    # then each answers 200 (the add page 403 where adding is not allowed), and lists the object
    assert changelist.status_code == 200
    assert obj in changelist.context["cl"].result_list
    assert add.status_code == (200 if admin_permits(model, world.admin_user, "add") else 403)
    assert change.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_delete_confirmation_pages_load(world: World, staff: Client, model) -> None:  # type: ignore[no-untyped-def]
    # when the superuser opens the delete page of the object, then it renders (it deletes
    # nothing), or is refused for a ledger's row (credit periods, usage records)
    obj = world.objects[model]
    response = staff.get(admin_url(model, "delete", obj.pk))
    assert response.status_code == (
        200 if admin_permits(model, world.admin_user, "delete") else 403
    )
    assert model.objects.filter(pk=obj.pk).exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model",
    [m for m in REGISTERED if m not in (User, Group)],
    ids=lambda m: m._meta.label,
)
def test_an_empty_add_form_is_refused_or_redisplayed_never_a_500(
    world: World, staff: Client, model: type[Model]
) -> None:
    # given how many objects exist
    before = model.objects.count()
    # when the add form is posted empty
    response = staff.post(admin_url(model, "add"), {})
    # then it is redisplayed with errors (200) or adding is forbidden (403); nothing is created
    assert response.status_code == (200 if admin_permits(model, world.admin_user, "add") else 403)
    assert model.objects.count() == before


@pytest.mark.django_db
def test_filters_of_the_other_lists_load(world: World, staff: Client) -> None:
    # when the other filtered and searchable lists are opened, then they answer 200
    pages = [
        (Tenant, {"status": "active"}),
        (Tenant, {"plan__id__exact": world.tenant.plan_id}),
        (Tenant, {"q": world.tenant.name}),
        (ApiKey, {"tenant__id__exact": world.tenant.pk}),
        (CreditPeriod, {"month__gte": str(world.succeeded.credit_month)}),
        (UsageRecord, {"model_slug__exact": "tiny"}),
        (DiffusionModel, {"family__exact": "sd15", "enabled__exact": "1"}),
        (DiffusionModel, {"q": "tiny"}),
        (LoraAdapter, {"family__exact": "sd15"}),
    ]
    for model, params in pages:
        response = staff.get(admin_url(model, "changelist"), params)
        assert response.status_code == 200, (model, params)
        assert response.context["cl"].result_count >= 1, (model, params)


# --- list pages: no query per row ----------------------------------------------------------------


def add_one_of_each() -> None:
    """Another tenant with its own plan, key, private model and LoRA (their owner is shown),
    upload, jobs (one succeeded, with its usage), and another user and group."""
    tenant = TenantFactory(plan=PlanFactory(max_concurrent_jobs=1))
    api_key_issue(tenant=tenant)
    model = DiffusionModelFactory(owner=tenant)
    LoraFactory(owner=tenant)
    UploadFactory(tenant=tenant)
    data = {"model": model.slug, "prompt": "a red fox"}
    succeeded, _ = job_submit(tenant=tenant, data=data)
    assert job_mark_succeeded(
        job_public_id=succeeded.public_id,
        attempt=1,
        output_keys=[f"tenants/{tenant.pk}/jobs/{succeeded.public_id}/0.png"],
        metrics={},
    )
    for _ in range(2):
        job_submit(tenant=tenant, data=data)
    webhook_endpoint_with_message(tenant, succeeded)
    discord_application_with_reply(tenant, succeeded)
    User.objects.create_user(f"staff-{tenant.pk}", is_staff=True)
    Group.objects.create(name=f"support-{tenant.pk}")


@pytest.mark.django_db
@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_a_list_page_takes_as_many_queries_for_many_rows_as_for_one(
    world: World, staff: Client, model: type[Model]
) -> None:
    # given the model's list page with the world's objects, loaded once (the session's first
    # load may differ)
    url = admin_url(model, "changelist")
    assert staff.get(url).status_code == 200
    with CaptureQueriesContext(connection) as few:
        shown = staff.get(url).context["cl"].result_count
    # when four more tenants come, with one of each model
    for _ in range(4):
        add_one_of_each()
    with CaptureQueriesContext(connection) as many:
        response = staff.get(url)
    # then the page lists them too, with the same number of queries
    assert response.status_code == 200
    assert response.context["cl"].result_count >= shown + 4
    assert len(many) == len(few), [query["sql"] for query in many.captured_queries]
