"""The admin pages of tenants: issuing a key shows it once, revoking stops it, scopes are
edited with checkboxes."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tenants.models import ApiKey, CreditPeriod, Tenant, UsageRecord
from tenants.services import api_key_issue
from tests.support.admin import World, admin_url, page_messages

KEY_PATTERN = re.compile(r"sk_live_[0-9a-f]{12}_[\w-]{20,}")


@pytest.mark.django_db
def test_issue_key_shows_the_key_once_and_it_authenticates(world: World, staff: Client) -> None:
    # given a tenant and how many keys it has
    before = set(ApiKey.objects.filter(tenant=world.tenant).values_list("pk", flat=True))
    # when the superuser runs "issue_key" on it from the tenant list
    response = staff.post(
        admin_url(Tenant, "changelist"),
        {"action": "issue_key", "_selected_action": [world.tenant.pk]},
        follow=True,
    )
    # then one key was created, and its plaintext is shown in a message
    assert response.status_code == 200
    (new_pk,) = (
        set(ApiKey.objects.filter(tenant=world.tenant).values_list("pk", flat=True)) - before
    )
    (message,) = [m for m in page_messages(response) if world.tenant.name in m]
    (plaintext,) = KEY_PATTERN.findall(message)
    key = ApiKey.objects.get(pk=new_pk)
    assert plaintext.startswith(f"sk_live_{key.prefix}_")
    # and only its hash is kept, and no later page shows it again
    assert plaintext not in (key.key_hash, key.name)
    for url in (
        admin_url(Tenant, "changelist"),
        admin_url(Tenant, "change", world.tenant.pk),
        admin_url(ApiKey, "change", key.pk),
    ):
        assert plaintext not in staff.get(url).content.decode(), url
    # and the key works against the API, as this tenant
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    models = api.get("/v1/models")
    assert models.status_code == 200
    assert [m["id"] for m in models.json()["results"]] == ["tiny"]
    assert api.get(f"/v1/jobs/{world.queued.public_id}").status_code == 200


@pytest.mark.django_db
def test_revoke_action_stops_the_key(world: World, staff: Client) -> None:
    # given a working key
    _, plaintext = api_key_issue(tenant=world.tenant)
    key = ApiKey.objects.get(prefix=plaintext.split("_")[2])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert api.get("/v1/models").status_code == 200
    # when the superuser revokes it
    staff.post(admin_url(ApiKey, "changelist"), {"action": "revoke", "_selected_action": [key.pk]})
    # then it no longer authenticates, and the tenant's other key still does
    assert api.get("/v1/models").status_code == 401
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert ApiKey.objects.get(pk=world.key.pk).revoked_at is None


@pytest.mark.django_db
def test_a_key_cannot_be_given_an_unknown_scope_in_the_admin(world: World, staff: Client) -> None:
    # given a key with the read scope only
    world.key.scopes = ["jobs:read"]
    world.key.save()
    # when its scopes are edited to include a scope that does not exist
    response = staff.post(
        admin_url(ApiKey, "change", world.key.pk),
        {"name": "ci", "scopes": '["jobs:read", "admin:everything"]'},
    )
    # then the form is redisplayed with an error and the key is unchanged
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    world.key.refresh_from_db()
    assert world.key.scopes == ["jobs:read"]


@pytest.mark.django_db
def test_a_key_scopes_are_edited_with_checkboxes(world: World, staff: Client) -> None:
    # given a key with the read scope only, which cannot submit jobs
    _, plaintext = api_key_issue(tenant=world.tenant, scopes=["jobs:read"])
    key = ApiKey.objects.get(prefix=plaintext.split("_")[2])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert api.post("/v1/jobs", {"model": "tiny", "prompt": "x"}, format="json").status_code == 403
    # when the write scope is ticked in the admin
    response = staff.post(
        admin_url(ApiKey, "change", key.pk),
        {"name": "ci", "scopes": ["jobs:write", "jobs:read"]},
    )
    # then the key is saved with both scopes and can submit jobs
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.scopes == ["jobs:read", "jobs:write"]
    assert api.post("/v1/jobs", {"model": "tiny", "prompt": "x"}, format="json").status_code == 202


@pytest.mark.django_db
@pytest.mark.parametrize("model", [CreditPeriod, UsageRecord], ids=lambda m: m.__name__)
def test_a_ledger_row_cannot_be_deleted_in_the_admin(
    world: World, staff: Client, model: type[CreditPeriod] | type[UsageRecord]
) -> None:
    # given a credit period or a usage record of a tenant
    row = world.objects[model]
    # when the superuser confirms its delete page, or runs the bulk delete on it from the list
    confirmed = staff.post(admin_url(model, "delete", row.pk), {"post": "yes"})
    bulk = staff.post(
        admin_url(model, "changelist"),
        {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"},
    )
    # then both are refused, and the row is still there
    assert confirmed.status_code == 403
    assert bulk.status_code in (200, 302)  # the list again: the action is not offered
    assert model.objects.filter(pk=row.pk).exists()
