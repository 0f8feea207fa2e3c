"""API keys at the edge: who gets in (401), what they may do (403), and how keys are kept."""

from __future__ import annotations

import datetime as dt
import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.test import APIClient

from jobs.models import Job, JobEvent
from jobs.services.submit import job_submit
from sdsaas.errors import InvalidInput
from tenants.models import ApiKey, CreditPeriod, Plan, Tenant
from tenants.services import KEY_PREFIX, api_key_issue, api_key_revoke
from tests.support.factories import DiffusionModelFactory, TenantFactory

pytestmark = pytest.mark.django_db

# Every endpoint of API v1 with the scope it needs; `{job}` is replaced by a real job id.
ENDPOINTS = [
    ("get", "/v1/jobs", "jobs:read"),
    ("post", "/v1/jobs", "jobs:write"),
    ("get", "/v1/jobs/{job}", "jobs:read"),
    ("post", "/v1/jobs/{job}/cancel", "jobs:write"),
    ("get", "/v1/models", "jobs:read"),
    ("get", "/v1/loras", "jobs:read"),
    ("get", "/v1/usage", "jobs:read"),
    ("post", "/v1/uploads", "jobs:write"),
]
ENDPOINT_IDS = [f"{method.upper()} {path}" for method, path, _ in ENDPOINTS]
JOB_BODY = {"model": "tiny", "prompt": "a lantern in the fog"}


@pytest.fixture
def job(tenant: Tenant, model: object) -> Job:
    created, _ = job_submit(tenant=tenant, data=dict(JOB_BODY))
    return created


def client_with(header: str | None) -> APIClient:
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)
    return client


def key_client(plaintext: str) -> APIClient:
    return client_with(f"Bearer {plaintext}")


def call(client: APIClient, method: str, path: str, job: Job) -> Response:
    url = path.format(job=job.public_id)
    if method == "post" and url == "/v1/jobs":
        return client.post(url, JOB_BODY, format="json")  # type: ignore[no-any-return]
    return getattr(client, method)(url)  # type: ignore[no-any-return]


def snapshot(tenant: Tenant) -> tuple[object, ...]:
    """What a refused request must leave as it was."""
    return (
        list(Job.objects.filter(tenant=tenant).order_by("id").values_list("public_id", "status")),
        list(CreditPeriod.objects.filter(tenant=tenant).values_list("reserved", "used")),
        JobEvent.objects.filter(job__tenant=tenant).count(),
    )


def assert_unauthenticated(response: Response) -> None:
    assert response.status_code == 401, response.content
    body = response.json()
    assert body["error"]["code"] == "unauthenticated"
    assert body["error"]["message"]
    assert response["WWW-Authenticate"].startswith("Bearer")


# --- 401 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_no_authorization_header_is_401(
    tenant: Tenant, job: Job, method: str, path: str, scope: str
) -> None:
    # given a tenant with a job, and a client that sends no Authorization header
    before = snapshot(tenant)
    # when it calls the endpoint
    response = call(client_with(None), method, path, job)
    # then it is refused with 401 and the challenge, and nothing changed
    assert_unauthenticated(response)
    assert snapshot(tenant) == before


MALFORMED_HEADERS = [
    "Bearer",
    "Bearer ",
    "Bearer    ",
    "Token {key}",
    "Basic dXNlcjpwYXNzd29yZA==",
    "{key}",
    "Bearer{key}",
    "Bearer not-an-api-key",
    "Bearer sk_live_",
    "Bearer sk_live_nounderscore",
    "Bearer sk_live_ab\x00cd_x",  # PostgreSQL text cannot hold NUL: never queried
    "Bearer sk_live_" + "a" * 40 + "_x",  # longer than any prefix
    "Bearer sk_test_{rest}",
    "Bearer {key} extra",
]


@pytest.mark.parametrize("template", MALFORMED_HEADERS)
@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_malformed_authorization_header_is_401(
    tenant: Tenant, job: Job, method: str, path: str, scope: str, template: str
) -> None:
    # given a valid key, mangled into a malformed Authorization header
    _, plaintext = api_key_issue(tenant=tenant)
    header = template.format(key=plaintext, rest=plaintext[len(KEY_PREFIX) :])
    before = snapshot(tenant)
    # when it is sent
    response = call(client_with(header), method, path, job)
    # then it is refused as unauthenticated, and nothing changed
    assert_unauthenticated(response)
    assert snapshot(tenant) == before


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_wrong_key_is_401(tenant: Tenant, job: Job, method: str, path: str, scope: str) -> None:
    # given a real key's prefix with another secret, and a key that was never issued
    key, plaintext = api_key_issue(tenant=tenant)
    forged = f"{KEY_PREFIX}{key.prefix}_{'A' * 43}"
    unknown = f"{KEY_PREFIX}0123456789ab_{'B' * 43}"
    before = snapshot(tenant)
    for attempt in (forged, unknown, plaintext + "x", plaintext[:-1]):
        # when either is used
        response = call(key_client(attempt), method, path, job)
        # then it is refused, and the real key is not marked as used
        assert_unauthenticated(response)
    assert snapshot(tenant) == before
    key.refresh_from_db()
    assert key.last_used_at is None


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_revoked_key_is_401(tenant: Tenant, job: Job, method: str, path: str, scope: str) -> None:
    # given a key that worked, then was revoked
    key, plaintext = api_key_issue(tenant=tenant)
    client = key_client(plaintext)
    assert client.get("/v1/models").status_code == 200
    api_key_revoke(key=key)
    before = snapshot(tenant)
    # when it is used again
    response = call(client, method, path, job)
    # then it is refused, and nothing changed
    assert_unauthenticated(response)
    assert snapshot(tenant) == before


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(tenant: Tenant, scheme: str) -> None:
    # given a valid key sent with the scheme in another case
    _, plaintext = api_key_issue(tenant=tenant)
    # when it is used
    response = client_with(f"{scheme} {plaintext}").get("/v1/models")
    # then it authenticates, as HTTP auth schemes are case-insensitive
    assert response.status_code == 200


def test_revoking_one_key_leaves_the_tenants_other_keys_working(tenant: Tenant) -> None:
    # given a tenant with two keys
    revoked, revoked_plaintext = api_key_issue(tenant=tenant)
    _, kept_plaintext = api_key_issue(tenant=tenant)
    # when one is revoked, twice (revoking is idempotent and keeps the first time)
    api_key_revoke(key=revoked)
    revoked.refresh_from_db()
    first_revoked_at = revoked.revoked_at
    api_key_revoke(key=revoked)
    revoked.refresh_from_db()
    # then only that one stops working
    assert revoked.revoked_at == first_revoked_at is not None
    assert_unauthenticated(key_client(revoked_plaintext).get("/v1/models"))
    assert key_client(kept_plaintext).get("/v1/models").status_code == 200


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_suspended_tenant_is_401(
    tenant: Tenant, job: Job, method: str, path: str, scope: str
) -> None:
    # given a tenant whose key worked, then the tenant was suspended
    _, plaintext = api_key_issue(tenant=tenant)
    client = key_client(plaintext)
    assert client.get("/v1/models").status_code == 200
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
    before = snapshot(tenant)
    # when its key is used
    response = call(client, method, path, job)
    # then it is refused, and nothing changed
    assert_unauthenticated(response)
    assert snapshot(tenant) == before


def test_reactivated_tenant_is_let_in_again(tenant: Tenant) -> None:
    # given a suspended tenant
    _, plaintext = api_key_issue(tenant=tenant)
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
    assert_unauthenticated(key_client(plaintext).get("/v1/models"))
    # when it is made active again
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.ACTIVE)
    # then the same key works
    assert key_client(plaintext).get("/v1/models").status_code == 200


# --- 403 ---------------------------------------------------------------------------------------

OTHER_SCOPES = {"jobs:read": ["jobs:write"], "jobs:write": ["jobs:read"]}


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize("held", [[], ["webhooks:manage"], None], ids=["none", "webhooks", "other"])
def test_key_without_the_needed_scope_is_403(
    tenant: Tenant, job: Job, method: str, path: str, scope: str, held: list[str] | None
) -> None:
    # given a live key that lacks the scope this endpoint needs
    scopes = OTHER_SCOPES[scope] if held is None else held
    _, plaintext = api_key_issue(tenant=tenant, scopes=scopes)
    before = snapshot(tenant)
    # when it calls the endpoint
    response = call(key_client(plaintext), method, path, job)
    # then it is forbidden (not unauthenticated), and nothing changed
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert scope in error["message"]
    assert snapshot(tenant) == before


# The status a request with a key that holds the scope gets: the gate let it through.
PAST_THE_GATE = {
    ("get", "/v1/jobs"): 200,
    ("post", "/v1/jobs"): 202,
    ("get", "/v1/jobs/{job}"): 200,
    ("post", "/v1/jobs/{job}/cancel"): 200,
    ("get", "/v1/models"): 200,
    ("get", "/v1/loras"): 200,
    ("get", "/v1/usage"): 200,
    ("post", "/v1/uploads"): 400,  # no file sent: refused by validation, after the gate
}


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_key_with_only_the_needed_scope_gets_through(
    tenant: Tenant, job: Job, method: str, path: str, scope: str
) -> None:
    # given a key with exactly the scope the endpoint needs
    _, plaintext = api_key_issue(tenant=tenant, scopes=[scope])
    # when it calls the endpoint
    response = call(key_client(plaintext), method, path, job)
    # then it is served
    assert response.status_code == PAST_THE_GATE[(method, path)], response.content


def test_read_only_key_cannot_submit_and_write_only_key_cannot_list(
    tenant: Tenant, model: object
) -> None:
    # given a read-only and a write-only key
    _, read = api_key_issue(tenant=tenant, scopes=["jobs:read"])
    _, write = api_key_issue(tenant=tenant, scopes=["jobs:write"])
    # when each tries the other's half of /v1/jobs
    submitted = key_client(read).post("/v1/jobs", JOB_BODY, format="json")
    listed = key_client(write).get("/v1/jobs")
    # then both are 403 forbidden, and no job was created
    assert (submitted.status_code, listed.status_code) == (403, 403)
    assert submitted.json()["error"]["code"] == listed.json()["error"]["code"] == "forbidden"
    assert not Job.objects.exists()
    # while each does its own half
    assert key_client(write).post("/v1/jobs", JOB_BODY, format="json").status_code == 202
    assert key_client(read).get("/v1/jobs").status_code == 200


def test_head_needs_what_get_needs_and_options_describes_the_endpoint(
    tenant: Tenant, job: Job
) -> None:
    # given a read-only and a write-only key
    _, read = api_key_issue(tenant=tenant, scopes=["jobs:read"])
    _, write = api_key_issue(tenant=tenant, scopes=["jobs:write"])
    # when each asks HEAD of a job and OPTIONS of the job list
    path = f"/v1/jobs/{job.public_id}"
    heads = [key_client(key).head(path).status_code for key in (read, write)]
    options = [key_client(key).options("/v1/jobs").status_code for key in (read, write)]
    # then HEAD is the read key's as GET is, and OPTIONS answers either key
    assert heads == [200, 403]
    assert options == [200, 200]


def test_issuing_a_key_with_an_unknown_scope_is_refused(tenant: Tenant) -> None:
    with pytest.raises(InvalidInput, match="scopes"):
        api_key_issue(tenant=tenant, scopes=["jobs:read", "admin"])
    assert not ApiKey.objects.exists()


# --- key storage and bookkeeping -----------------------------------------------------------------


def test_last_used_at_is_set_on_use(tenant: Tenant) -> None:
    # given a fresh key, never used
    key, plaintext = api_key_issue(tenant=tenant)
    assert key.last_used_at is None
    # when it is used
    before = timezone.now()
    assert key_client(plaintext).get("/v1/models").status_code == 200
    # then last_used_at is set to now
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert before <= key.last_used_at <= timezone.now()


def test_last_used_at_is_refreshed_once_it_is_stale(tenant: Tenant) -> None:
    # given a write-only key last used an hour ago
    key, plaintext = api_key_issue(tenant=tenant, scopes=["jobs:write"])
    an_hour_ago = timezone.now() - dt.timedelta(hours=1)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=an_hour_ago)
    # when it is used, even for a request it is then forbidden to make
    assert key_client(plaintext).get("/v1/usage").status_code == 403
    # then last_used_at moves to now
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert key.last_used_at > an_hour_ago + dt.timedelta(minutes=59)


def test_the_plaintext_key_is_not_stored(tenant: Tenant) -> None:
    # when a key is issued
    key, plaintext = api_key_issue(tenant=tenant, name="ci")
    # then it has the public form, and only its prefix and SHA-256 are kept
    assert plaintext.startswith(f"{KEY_PREFIX}{key.prefix}_")
    secret = plaintext[len(f"{KEY_PREFIX}{key.prefix}_") :]
    assert len(secret) >= 32
    stored = ApiKey.objects.filter(pk=key.pk).values().get()
    assert stored["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    for value in stored.values():
        assert secret not in str(value)
    assert secret not in str(key)
    assert secret not in repr(key)


def test_each_issued_key_is_distinct(tenant: Tenant) -> None:
    issued = [api_key_issue(tenant=tenant) for _ in range(5)]
    assert len({plaintext for _, plaintext in issued}) == 5
    assert len({key.prefix for key, _ in issued}) == 5


# --- management commands -----------------------------------------------------------------------


def test_tenant_create_command_creates_a_tenant_on_a_plan() -> None:
    # when an operator creates a tenant on a new plan
    out = StringIO()
    call_command("tenant_create", "acme", "--plan", "pro", stdout=out)
    # then the tenant exists, active, on that plan, and the command said so
    tenant = Tenant.objects.get(name="acme")
    assert tenant.plan.name == "pro"
    assert tenant.is_active
    assert "acme" in out.getvalue()


def test_tenant_create_command_uses_the_default_plan_and_refuses_duplicates() -> None:
    call_command("tenant_create", "acme", stdout=StringIO())
    assert Tenant.objects.get(name="acme").plan.name == "default"
    with pytest.raises(CommandError, match="acme"):
        call_command("tenant_create", "acme", stdout=StringIO())
    assert Tenant.objects.filter(name="acme").count() == 1
    assert Plan.objects.filter(name="default").count() == 1


def test_api_key_issue_command_prints_a_key_that_authenticates() -> None:
    # given a tenant made by the command
    call_command("tenant_create", "acme", stdout=StringIO())
    DiffusionModelFactory(slug="tiny")
    # when a read-only key is issued by the command
    out = StringIO()
    call_command("api_key_issue", "acme", "--scope", "jobs:read", "--name", "ci", stdout=out)
    plaintext = out.getvalue().strip()
    # then the printed key is the only output, authenticates as that tenant, with that scope
    assert plaintext.startswith(KEY_PREFIX)
    assert "\n" not in plaintext
    key = ApiKey.objects.get(tenant__name="acme")
    assert (key.name, key.scopes) == ("ci", ["jobs:read"])
    assert key.key_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    client = key_client(plaintext)
    assert client.get("/v1/usage").status_code == 200
    assert client.post("/v1/jobs", JOB_BODY, format="json").status_code == 403


def test_api_key_issue_command_defaults_to_all_scopes() -> None:
    call_command("tenant_create", "acme", stdout=StringIO())
    out = StringIO()
    call_command("api_key_issue", "acme", stdout=out)
    key = ApiKey.objects.get(tenant__name="acme")
    assert sorted(key.scopes) == sorted(ApiKey.Scope.values)
    assert key_client(out.getvalue().strip()).get("/v1/jobs").status_code == 200


@pytest.mark.parametrize(
    "args",
    [("nobody",), ("acme", "--scope", "jobs:admin")],
    ids=["unknown-tenant", "unknown-scope"],
)
def test_api_key_issue_command_errors_issue_no_key(args: tuple[str, ...]) -> None:
    TenantFactory(name="acme")
    with pytest.raises(CommandError):
        call_command("api_key_issue", *args, stdout=StringIO())
    assert not ApiKey.objects.exists()
