"""Who may call the webhook API: a key without the webhooks:manage scope gets a 403 for every
operation, and another tenant's endpoints and messages are a 404 like missing ones."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from integrations.webhooks.models import (
    JobWebhookSecret,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from tenants.models import Tenant
from tests.support.api import assert_error
from tests.support.factories import api_client_for
from tests.support.webhooks_api import (
    ENDPOINTS,
    MANAGE,
    URL,
    create_body,
    new_endpoint,
    new_message,
)

pytestmark = pytest.mark.django_db

# Every operation, on `{endpoint}` and `{message}` of their owner.
OPERATIONS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("get", ENDPOINTS, None),
    ("post", ENDPOINTS, create_body()),
    ("get", f"{ENDPOINTS}/{{endpoint}}", None),
    ("patch", f"{ENDPOINTS}/{{endpoint}}", {"description": "taken", "enabled": False}),
    ("delete", f"{ENDPOINTS}/{{endpoint}}", None),
    ("post", f"{ENDPOINTS}/{{endpoint}}/rotate-secret", None),
    ("post", f"{ENDPOINTS}/{{endpoint}}/test", None),
    ("get", f"{ENDPOINTS}/{{endpoint}}/deliveries", None),
    ("post", f"{ENDPOINTS}/{{endpoint}}/redeliver-failed", {"since": "2000-01-01T00:00:00Z"}),
    ("post", "/v1/webhooks/deliveries/{message}/redeliver", None),
    ("post", "/v1/webhooks/job-secret", None),
]
ON_AN_OBJECT = [op for op in OPERATIONS if "{" in op[1]]


def call(client: APIClient, method: str, path: str, body: dict[str, Any] | None, **ids: str) -> Any:
    url = path.format(**ids)
    return (
        getattr(client, method)(url, body, format="json") if body else getattr(client, method)(url)
    )


def world_state() -> dict[str, Any]:
    """Every webhook row, to compare before and after a refused request."""
    return {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in (WebhookEndpoint, WebhookMessage, WebhookAttempt, JobWebhookSecret)
    }


@pytest.fixture
def owned(tenant: Tenant) -> dict[str, str]:
    """The tenant's endpoint with a failed message, by the ids the paths take."""
    endpoint = new_endpoint(tenant)
    message = new_message(endpoint, status="failed", attempts=[(500, "")])
    return {"endpoint": endpoint.public_id, "message": message.public_id}


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS, ids=lambda v: str(v))
def test_a_key_without_the_webhooks_scope_gets_a_403_and_changes_nothing(
    tenant: Tenant,
    other_tenant: Tenant,
    owned: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    # given the owner's key and another tenant's key, both with every scope but webhooks:manage
    jobs_only = ["jobs:read", "jobs:write"]
    before = world_state()
    for client in (api_client_for(tenant, jobs_only), api_client_for(other_tenant, jobs_only)):
        # when either calls the operation
        response = call(client, method, path, body, **owned)
        # then it is a 403 naming the scope (checked before the object: no probing of ids)
        assert_error(response, 403, "forbidden")
        assert MANAGE in response.json()["error"]["message"]
    # and nothing changed
    assert world_state() == before


@pytest.mark.parametrize(("method", "path", "body"), ON_AN_OBJECT, ids=lambda v: str(v))
def test_another_tenants_endpoint_or_message_is_a_404_like_a_missing_one(
    tenant: Tenant,
    other_tenant: Tenant,
    owned: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    # given the tenant's endpoint and message, and another tenant with endpoints of its own
    new_message(new_endpoint(other_tenant), status="failed")
    intruder = api_client_for(other_tenant)
    missing = {"endpoint": "whe_00000000000000000000", "message": "msg_00000000000000000000"}
    before = world_state()
    # when the other tenant calls the operation on the tenant's objects, and on missing ones
    theirs = call(intruder, method, path, body, **owned)
    absent = call(intruder, method, path, body, **missing)
    # then both are the same 404, but for the id
    assert_error(theirs, 404, "not_found")
    assert_error(absent, 404, "not_found")
    text = theirs.content.decode()
    for kind, public_id in owned.items():
        text = text.replace(public_id, missing[kind])
    assert json.loads(text) == absent.json()
    # and nothing changed
    assert world_state() == before


@pytest.mark.parametrize(
    "raw_id",
    ["whe_missing", "whe%00x", "%F0%9F%A6%8A", "x" * 500, "%ED%A0%80", "whe_x%20"],
    ids=["missing", "nul", "emoji", "long", "invalid-utf8", "space"],
)
def test_an_id_that_cannot_exist_is_a_404_never_a_500(tenant: Tenant, raw_id: str) -> None:
    # given a tenant with an endpoint and a message (a lookup that ignored the id would find them)
    new_message(new_endpoint(tenant), status="failed")
    client = api_client_for(tenant)
    client.raise_request_exception = False
    before = world_state()
    for method, path, body in ON_AN_OBJECT:
        # when an operation is called with the id, then it is the uniform 404
        response = call(client, method, path, body, endpoint=raw_id, message=raw_id)
        assert_error(response, 404, "not_found")
    assert world_state() == before


def test_each_tenant_lists_only_its_own_endpoints(tenant: Tenant, other_tenant: Tenant) -> None:
    # given two endpoints of one tenant and one of another
    ours = [new_endpoint(tenant, url=f"{URL}/{n}").public_id for n in range(2)]
    theirs = new_endpoint(other_tenant).public_id
    # when each lists its endpoints, then each sees just its own
    listed = api_client_for(tenant).get(ENDPOINTS).json()["results"]
    assert sorted(e["id"] for e in listed) == sorted(ours)
    other_listed = api_client_for(other_tenant).get(ENDPOINTS).json()["results"]
    assert [e["id"] for e in other_listed] == [theirs]


def test_the_owner_can_do_what_the_other_tenant_could_not(
    tenant: Tenant, owned: dict[str, str]
) -> None:
    # the counterpart of the 404s above: the same calls by the owner succeed
    client = api_client_for(tenant, scopes=[MANAGE])
    expected = {"get": 200, "patch": 200, "delete": 204}
    for method, path, body in ON_AN_OBJECT:
        if method == "delete":
            continue
        response = call(client, method, path, body, **owned)
        wanted = expected.get(
            method, 202 if path.endswith(("/test", "redeliver", "failed")) else 200
        )
        assert response.status_code == wanted, (method, path, response.content)
    assert call(client, "delete", f"{ENDPOINTS}/{{endpoint}}", None, **owned).status_code == 204
