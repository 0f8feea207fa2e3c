"""The webhook API's endpoints (`/v1/webhooks/endpoints…`): create, read, list, change, delete,
rotate the secret, and the per-job secret (`/v1/webhooks/job-secret`). A secret is shown once, and
stored encrypted."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from integrations.webhooks.models import (
    EndpointNotice,
    JobWebhookSecret,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from integrations.webhooks.secrets import secret_decrypt
from tenants.models import Tenant
from tests.support.api import assert_error
from tests.support.factories import api_client_for
from tests.support.webhooks_api import (
    ENDPOINTS,
    MANAGE,
    OTHER_URL,
    URL,
    create_body,
    new_endpoint,
    new_message,
)

pytestmark = pytest.mark.django_db

ENDPOINT_FIELDS = {
    "id",
    "url",
    "events",
    "enabled",
    "description",
    "disabled_reason",
    "failing_since",
    "notices",
    "created_at",
}


def secret_of(endpoint_id: str) -> str:
    return secret_decrypt(WebhookEndpoint.objects.get(public_id=endpoint_id).secret_encrypted)


def test_create_shows_the_secret_once_and_stores_it_encrypted(tenant: Tenant) -> None:
    # given a key with the webhooks:manage scope only
    client = api_client_for(tenant, scopes=[MANAGE])
    # when an endpoint is created
    response = client.post(
        ENDPOINTS,
        create_body(events=["job.failed", "job.succeeded"], description="prod"),
        format="json",
    )
    # then the answer is the endpoint, with its secret
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == ENDPOINT_FIELDS | {"secret"}
    assert body["id"].startswith("whe_")
    assert body["url"] == URL
    assert body["events"] == ["job.succeeded", "job.failed"]  # in the documented order
    assert (body["enabled"], body["description"]) == (True, "prod")
    assert (body["disabled_reason"], body["failing_since"], body["notices"]) == (None, None, [])
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(secret) > len("whsec_") + 40
    # and it is stored encrypted, never as shown, and decrypts to what was shown
    stored = WebhookEndpoint.objects.get(public_id=body["id"])
    assert stored.tenant == tenant
    assert secret not in stored.secret_encrypted
    assert secret_decrypt(stored.secret_encrypted) == secret
    # and no later answer about it shows the secret again
    later = [
        client.get(ENDPOINTS),
        client.get(f"{ENDPOINTS}/{body['id']}"),
        client.patch(f"{ENDPOINTS}/{body['id']}", {"description": "x"}, format="json"),
        client.post(f"{ENDPOINTS}/{body['id']}/test"),
        client.get(f"{ENDPOINTS}/{body['id']}/deliveries"),
    ]
    for answer in later:
        assert answer.status_code in (200, 202), answer.content
        assert '"secret"' not in answer.content.decode()
        assert secret not in answer.content.decode()


def test_get_and_list_show_the_endpoint_with_its_recent_notices(tenant: Tenant) -> None:
    # given an endpoint that failed, was disabled, then recovered
    endpoint = new_endpoint(tenant)
    for kind in ("failing", "disabled", "recovered"):
        EndpointNotice.objects.create(endpoint=endpoint, kind=kind, detail=f"it was {kind}")
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(disabled_reason="")
    client = api_client_for(tenant)
    # when it is read, alone and in the list
    one = client.get(f"{ENDPOINTS}/{endpoint.public_id}")
    listed = client.get(ENDPOINTS)
    # then both show it the same way, its notices newest first
    assert one.status_code == listed.status_code == 200
    assert listed.json()["results"] == [one.json()]
    notices = one.json()["notices"]
    assert [n["kind"] for n in notices] == ["recovered", "disabled", "failing"]
    assert notices[0]["detail"] == "it was recovered"
    assert set(notices[0]) == {"kind", "detail", "created_at"}


def test_patch_changes_the_given_fields_and_enabling_clears_the_failure(tenant: Tenant) -> None:
    # given an endpoint disabled by the sender after failing
    endpoint = new_endpoint(tenant)
    failing_since = timezone.now() - dt.timedelta(days=6)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False, disabled_reason="every delivery failed", failing_since=failing_since
    )
    client = api_client_for(tenant)
    url = f"{ENDPOINTS}/{endpoint.public_id}"
    shown = client.get(url).json()
    assert shown["enabled"] is False
    assert shown["disabled_reason"] == "every delivery failed"
    assert shown["failing_since"] is not None
    # when its URL and events change, then it is enabled again
    changed = client.patch(url, {"url": OTHER_URL, "events": ["job.canceled"]}, format="json")
    enabled = client.patch(url, {"enabled": True, "description": "fixed"}, format="json")
    # then each answer is the endpoint as changed, the other fields as they were
    assert changed.status_code == 200, changed.content
    assert changed.json()["url"] == OTHER_URL
    assert changed.json()["events"] == ["job.canceled"]
    assert changed.json()["enabled"] is False
    assert enabled.status_code == 200, enabled.content
    body = enabled.json()
    assert (body["url"], body["events"], body["description"]) == (
        OTHER_URL,
        ["job.canceled"],
        "fixed",
    )
    assert (body["enabled"], body["disabled_reason"], body["failing_since"]) == (True, None, None)
    # and an empty PATCH changes nothing
    assert client.patch(url, {}, format="json").json() == body


def test_delete_removes_the_endpoint_and_its_log(tenant: Tenant) -> None:
    # given an endpoint with a delivered message
    endpoint = new_endpoint(tenant)
    new_message(endpoint, status="succeeded", attempts=[(200, "")])
    client = api_client_for(tenant)
    url = f"{ENDPOINTS}/{endpoint.public_id}"
    # when it is deleted
    response = client.delete(url)
    # then the answer is an empty 204, and it is gone with its messages and their attempts
    assert response.status_code == 204
    assert response.content == b""
    assert_error(client.get(url), 404, "not_found")
    assert not WebhookMessage.objects.exists()
    assert not WebhookAttempt.objects.exists()


def test_rotate_returns_a_new_secret_once_and_the_old_one_still_signs(tenant: Tenant) -> None:
    # given an endpoint created through the API
    client = api_client_for(tenant)
    created = client.post(ENDPOINTS, create_body(), format="json").json()
    old = created["secret"]
    # when its secret is rotated
    response = client.post(f"{ENDPOINTS}/{created['id']}/rotate-secret")
    # then the answer is the endpoint with a new secret, stored encrypted
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == ENDPOINT_FIELDS | {"secret"}
    assert body["id"] == created["id"]
    new = body["secret"]
    assert new.startswith("whsec_") and new != old
    assert secret_of(created["id"]) == new
    # and the old one is kept, encrypted, for the rotation window
    stored = WebhookEndpoint.objects.get(public_id=created["id"])
    assert secret_decrypt(stored.previous_secret_encrypted) == old
    assert stored.previous_secret_expires_at is not None
    assert stored.previous_secret_expires_at > timezone.now()
    # and reading the endpoint shows neither
    content = client.get(f"{ENDPOINTS}/{created['id']}").content.decode()
    assert old not in content and new not in content


def test_the_job_secret_is_shown_once_stored_encrypted_and_replaced(tenant: Tenant) -> None:
    client = api_client_for(tenant, scopes=[MANAGE])
    # when the per-job secret is issued twice
    first = client.post("/v1/webhooks/job-secret")
    second = client.post("/v1/webhooks/job-secret")
    # then each answer holds a new secret, and only the second is kept, encrypted
    assert first.status_code == second.status_code == 201, first.content
    assert set(first.json()) == {"secret"}
    old, new = first.json()["secret"], second.json()["secret"]
    assert old.startswith("whsec_") and new.startswith("whsec_") and old != new
    (stored,) = JobWebhookSecret.objects.all()
    assert stored.tenant == tenant
    assert new not in stored.secret_encrypted
    assert secret_decrypt(stored.secret_encrypted) == new


def test_the_endpoint_list_pages_newest_first_with_cursors(tenant: Tenant) -> None:
    # given five endpoints
    ids = [new_endpoint(tenant, url=f"{URL}/{n}").public_id for n in range(5)]
    client = api_client_for(tenant)
    # when they are listed two at a time, following `next`
    seen: list[str] = []
    url: str | None = f"{ENDPOINTS}?limit=2"
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.content
        seen += [e["id"] for e in page.json()["results"]]
        url = page.json()["next"]
    # then every one comes once, newest first
    assert seen == ids[::-1]
