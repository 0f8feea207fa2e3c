"""What the webhook API refuses: an invalid or malformed body or query (400, naming the field),
a form body (415), a tenant's twenty-first endpoint (409), a method an operation lacks (405);
and a refused request changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from integrations.webhooks.models import WebhookEndpoint, WebhookMessage
from tenants.models import Tenant
from tests.support.api import assert_error
from tests.support.factories import api_client_for
from tests.support.webhooks_api import ENDPOINTS, URL, create_body, new_endpoint, new_message

pytestmark = pytest.mark.django_db


def endpoint_row(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return WebhookEndpoint.objects.filter(pk=endpoint.pk).values().get()


# (body, the error message's field path, the field that details name)
BAD_CREATES = [
    ({"url": "http://1.1.1.1/x"}, "url", "url"),
    ({"url": "https://10.0.0.1/x"}, "url", "url"),
    ({"url": "https://127.0.0.1/x"}, "url", "url"),
    ({"url": "https://[::1]/x"}, "url", "url"),
    ({"url": "https://169.254.169.254/latest/meta-data"}, "url", "url"),
    ({"url": "https://user:pw@1.1.1.1/x"}, "url", "url"),
    ({"url": "https://1.1.1.1:99999/x"}, "url", "url"),
    ({"url": "https://1.1.1.1/a b"}, "url", "url"),
    ({"url": "https://1.1.1.1/a\x00b"}, "url", "url"),
    ({"url": "https://1.1.1.1/é"}, "url", "url"),
    ({"url": "not a url"}, "url", "url"),
    ({"url": "https://1.1.1.1/" + "a" * 2048}, "url", "url"),
    ({"url": ""}, "url", "url"),
    ({"url": None}, "url", "url"),
    ({"url": 5}, "url", "url"),
    ({"url": ["https://1.1.1.1/"]}, "url", "url"),
    ({"events": []}, "events", "events"),
    ({"events": "job.succeeded"}, "events", "events"),
    ({"events": None}, "events", "events"),
    ({"events": ["job.exploded"]}, "events[0]", "events"),
    ({"events": ["webhook.test"]}, "events[0]", "events"),
    ({"events": ["job.succeeded", 1]}, "events[1]", "events"),
    ({"events": ["job.succeeded"] * 6}, "events", "events"),
    ({"description": "x" * 257}, "description", "description"),
    ({"description": 1}, "description", "description"),
    ({"secret": "whsec_mine"}, "secret", "secret"),
    ({"enabled": False}, "enabled", "enabled"),
]


@pytest.mark.parametrize(("fields", "path", "field"), BAD_CREATES, ids=repr)
def test_an_invalid_create_is_a_400_naming_the_field(
    tenant: Tenant, fields: dict[str, Any], path: str, field: str
) -> None:
    client = api_client_for(tenant)
    # when an endpoint is created with one bad field
    response = client.post(ENDPOINTS, create_body(**fields), format="json")
    # then it is a 400 in the one error shape, naming the field, and nothing is created
    assert_error(response, 400, "invalid_input")
    body = response.json()["error"]
    assert body["message"].startswith(f"{path}:"), body
    assert field in body["details"], body
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        b'{"url": "https://1.1.1.1/\\ud800", "events": ["job.succeeded"]}',
        b'{"url": "https://1.1.1.1/", "events": ["job.succeeded"], "description": "\\udfff"}',
        b'{"url": "https://1.1.1.1/", "events": ["job.succeeded"]',
        b"[]",
        b'"https://1.1.1.1/"',
    ],
    ids=["lone-surrogate-url", "lone-surrogate-description", "truncated", "array", "string"],
)
def test_a_malformed_create_is_a_400_never_a_500(tenant: Tenant, body: bytes) -> None:
    response = api_client_for(tenant).post(ENDPOINTS, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert set(response.json()["error"]) == {"code", "message", "details"}
    assert not WebhookEndpoint.objects.exists()


def test_a_missing_field_or_a_form_body_is_refused(tenant: Tenant) -> None:
    client = api_client_for(tenant)
    assert_error(
        client.post(ENDPOINTS, {"url": URL}, format="json"), 400, "invalid_input", "events"
    )
    assert_error(
        client.post(ENDPOINTS, {"events": ["job.failed"]}, format="json"),
        400,
        "invalid_input",
        "url",
    )
    assert_error(client.post(ENDPOINTS, create_body()), 415, "unsupported_media_type")
    assert not WebhookEndpoint.objects.exists()


BAD_PATCHES = [
    ({"url": "https://10.0.0.1/x"}, "url"),
    ({"url": "http://1.1.1.1/x"}, "url"),
    ({"url": None}, "url"),
    ({"events": []}, "events"),
    ({"events": ["job.exploded"]}, "events[0]"),
    ({"enabled": "false"}, "enabled"),
    ({"enabled": 0}, "enabled"),
    ({"enabled": None}, "enabled"),
    ({"description": None}, "description"),
    ({"secret": "whsec_mine"}, "secret"),
]


@pytest.mark.parametrize(("fields", "path"), BAD_PATCHES, ids=repr)
def test_an_invalid_patch_is_a_400_and_changes_nothing(
    tenant: Tenant, fields: dict[str, Any], path: str
) -> None:
    # given an endpoint
    endpoint = new_endpoint(tenant)
    before = endpoint_row(endpoint)
    # when it is patched with one bad field
    response = api_client_for(tenant).patch(
        f"{ENDPOINTS}/{endpoint.public_id}", fields, format="json"
    )
    # then it is a 400 naming the field, and the endpoint is as it was
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["message"].startswith(f"{path}:")
    assert endpoint_row(endpoint) == before


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": 1700000000}, "since"),
        ({"since": None}, "since"),
        ({"since": "9999-12-31T23:59:59-23:00"}, "since"),
        ({"since": "2024-01-01T00:00:00Z", "status": "failed"}, "status"),
    ],
    ids=repr,
)
def test_an_invalid_redeliver_failed_is_a_400_and_sends_nothing(
    tenant: Tenant, body: dict[str, Any], path: str
) -> None:
    endpoint = new_endpoint(tenant)
    failed = new_message(endpoint, status="failed")
    response = api_client_for(tenant).post(
        f"{ENDPOINTS}/{endpoint.public_id}/redeliver-failed", body, format="json"
    )
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["message"].startswith(f"{path}:")
    assert WebhookMessage.objects.get(pk=failed.pk).status == WebhookMessage.Status.FAILED


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("status=lost", "status"),
        ("status=", "status"),
        ("status=failed&status=pending", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5", "cursor"),
        ("verbose=1", "verbose"),
    ],
)
def test_an_invalid_query_is_a_400(tenant: Tenant, query: str, path: str) -> None:
    endpoint = new_endpoint(tenant)
    client = api_client_for(tenant)
    response = client.get(f"{ENDPOINTS}/{endpoint.public_id}/deliveries?{query}")
    assert_error(response, 400, "invalid_input")
    assert response.json()["error"]["message"].startswith(f"{path}:")
    if path != "status":
        listed = client.get(f"{ENDPOINTS}?{query}")
        assert_error(listed, 400, "invalid_input")
        assert listed.json()["error"]["message"].startswith(f"{path}:")


def test_a_tenant_has_at_most_twenty_endpoints(tenant: Tenant) -> None:
    for n in range(20):
        new_endpoint(tenant, url=f"{URL}/{n}")
    response = api_client_for(tenant).post(ENDPOINTS, create_body(), format="json")
    assert_error(response, 409, "conflict")
    assert WebhookEndpoint.objects.count() == 20


def test_a_method_an_operation_does_not_have_is_a_405(tenant: Tenant) -> None:
    endpoint = new_endpoint(tenant)
    client = api_client_for(tenant)
    assert_error(client.put(f"{ENDPOINTS}/{endpoint.public_id}", {}), 405, "method_not_allowed")
    assert_error(client.delete(ENDPOINTS), 405, "method_not_allowed")
    assert_error(client.get("/v1/webhooks/job-secret"), 405, "method_not_allowed")
