"""The webhook API in the OpenAPI schema: every operation documented, and each answer in the
documented shape."""

from __future__ import annotations

import pytest

from integrations.webhooks.models import EndpointNotice, WebhookEndpoint
from tenants.models import Tenant
from tests.sdsaas.test_openapi import assert_documented, fetch_schema
from tests.support.factories import JobFactory, api_client_for
from tests.support.webhooks_api import ENDPOINTS, create_body, new_message

pytestmark = pytest.mark.django_db

WEBHOOK_PATHS = {
    "/v1/webhooks/endpoints": {"get", "post"},
    "/v1/webhooks/endpoints/{endpoint_id}": {"get", "patch", "delete"},
    "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret": {"post"},
    "/v1/webhooks/endpoints/{endpoint_id}/test": {"post"},
    "/v1/webhooks/endpoints/{endpoint_id}/deliveries": {"get"},
    "/v1/webhooks/endpoints/{endpoint_id}/redeliver-failed": {"post"},
    "/v1/webhooks/deliveries/{message_id}/redeliver": {"post"},
    "/v1/webhooks/job-secret": {"post"},
}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_the_schema_documents_every_webhook_operation(db: None) -> None:
    document = fetch_schema()
    for path, methods in WEBHOOK_PATHS.items():
        assert set(document["paths"][path]) & METHODS == methods, path
        for method in methods:
            operation = document["paths"][path][method]
            assert operation["security"] == [{"ApiKey": []}], (path, method)
            assert {"400", "401", "403"} <= set(operation["responses"]), (path, method)
            if "{" in path:
                assert "404" in operation["responses"], (path, method)
    # and the secret is in the answers that make one, and in no other
    with_secret = document["components"]["schemas"]["WebhookEndpointWithSecret"]
    assert "secret" in with_secret["required"]
    assert "secret" not in document["components"]["schemas"]["WebhookEndpoint"]["properties"]
    create = document["components"]["schemas"]["WebhookEndpointCreateRequest"]
    assert create["additionalProperties"] is False
    assert create["properties"]["events"]["minItems"] == 1


def test_webhook_answers_match_the_documented_schemas(tenant: Tenant) -> None:
    # given the schema, and an endpoint with a notice and a logged message
    document = fetch_schema()
    client = api_client_for(tenant)
    created = client.post(ENDPOINTS, create_body(), format="json")
    endpoint = WebhookEndpoint.objects.get(public_id=created.json()["id"])
    EndpointNotice.objects.create(endpoint=endpoint, kind="failing", detail="x")
    message = new_message(
        endpoint, status="failed", attempts=[(None, "refused")], job=JobFactory(tenant=tenant)
    )
    e, m = endpoint.public_id, message.public_id
    one = "/v1/webhooks/endpoints/{endpoint_id}"
    calls = [
        ("/v1/webhooks/endpoints", "post", created),
        ("/v1/webhooks/endpoints", "get", client.get(ENDPOINTS)),
        (one, "get", client.get(f"{ENDPOINTS}/{e}")),
        (one, "patch", client.patch(f"{ENDPOINTS}/{e}", {"enabled": False}, format="json")),
        (one, "patch", client.patch(f"{ENDPOINTS}/{e}", {"events": []}, format="json")),
        (f"{one}/deliveries", "get", client.get(f"{ENDPOINTS}/{e}/deliveries")),
        (f"{one}/test", "post", client.post(f"{ENDPOINTS}/{e}/test")),
        (f"{one}/rotate-secret", "post", client.post(f"{ENDPOINTS}/{e}/rotate-secret")),
        (
            f"{one}/redeliver-failed",
            "post",
            client.post(
                f"{ENDPOINTS}/{e}/redeliver-failed", {"since": "2020-01-01"}, format="json"
            ),
        ),
        (
            "/v1/webhooks/deliveries/{message_id}/redeliver",
            "post",
            client.post(f"/v1/webhooks/deliveries/{m}/redeliver"),
        ),
        ("/v1/webhooks/job-secret", "post", client.post("/v1/webhooks/job-secret")),
        (one, "get", client.get(f"{ENDPOINTS}/whe_missing")),
    ]
    # when each is called, then its answer has the documented shape
    for path, method, response in calls:
        assert response.status_code < 500, (path, method, response.content)
        assert_documented(document, path, method, response)
    # and a DELETE's 204 is documented, without a body
    deleted = client.delete(f"{ENDPOINTS}/{e}")
    assert deleted.status_code == 204
    assert "content" not in document["paths"][one]["delete"]["responses"]["204"]
