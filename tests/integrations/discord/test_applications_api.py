"""The Discord management API (`/v1/discord/applications…`): applications and their guild
policies, who may call it, what it refuses, and how it documents itself; then registering the
slash commands with Discord (a real HTTP server, tests/support/discord_api.py) and rotating the
tokens' keys. A bot token goes in once and never comes out: not in an answer, not in a command's
output; it is stored encrypted."""

from __future__ import annotations

import io
import json
import secrets
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from integrations.discord.commands import command_definitions
from integrations.discord.models import DiscordApplication, DiscordReply, GuildPolicy
from integrations.discord.selectors import application_by_public_id
from integrations.discord.services.applications import application_create, commands_register
from integrations.discord.tokens import token_decrypt, token_encrypt
from sdsaas.errors import NotFound
from tenants.models import Tenant
from tests.sdsaas.test_openapi import assert_documented, fetch_schema
from tests.support.api import assert_error
from tests.support.discord import DiscordApp, snowflake
from tests.support.discord_api import FakeDiscord
from tests.support.factories import DiffusionModelFactory, JobFactory, api_client_for

pytestmark = pytest.mark.django_db

APPS = "/v1/discord/applications"
MANAGE = "discord:manage"
GUILD = "111111111111111111"
CHANNEL = "222222222222222222"
APPLICATION_FIELDS = {
    "id",
    "application_id",
    "public_key",
    "interactions_url",
    "upscale_model",
    "commands_registered_at",
    "created_at",
    "updated_at",
}
POLICY_FIELDS = {
    "guild_id",
    "allowed_models",
    "allowed_channels",
    "max_steps",
    "max_side",
    "default_negative_prompt",
    "daily_images_per_user",
    "created_at",
    "updated_at",
}
NO_LIMITS = {
    "allowed_models": [],
    "allowed_channels": [],
    "max_steps": None,
    "max_side": None,
    "default_negative_prompt": "",
    "daily_images_per_user": None,
}


def bot_token() -> str:
    """A token shaped like Discord's (three dot-separated base64 parts), unique to the test."""
    return f"MTE{secrets.token_urlsafe(21)}.{secrets.token_urlsafe(5)}.{secrets.token_urlsafe(28)}"


def create_body(app: DiscordApp | None = None, **fields: Any) -> dict[str, Any]:
    app = app or DiscordApp(bot_token=bot_token())
    body = {
        "application_id": app.application_id,
        "public_key": app.public_key,
        "bot_token": app.bot_token,
    }
    return {**body, **fields}


def new_application(tenant: Tenant, **fields: Any) -> tuple[DiscordApplication, str]:
    """The tenant's application as the API registers it, and its bot token."""
    body = create_body(**fields)
    return application_create(tenant=tenant, **body), body["bot_token"]


def assert_invalid(response: Any, path: str) -> None:
    """A 400 whose message starts with the field's path (`allowed_models[1]`) and whose details
    name it: by the field (DRF's nested details) or by the path (a service's check)."""
    assert_error(response, 400, "invalid_input")
    error = response.json()["error"]
    assert error["message"].startswith(f"{path}:"), error
    assert {path, path.split("[")[0]} & set(error["details"]), error


def world_state() -> dict[str, Any]:
    """Every application and policy row, to compare before and after a refused request."""
    return {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in (DiscordApplication, GuildPolicy)
    }


def call(client: APIClient, method: str, path: str, body: Any, **ids: str) -> Any:
    url = path.format(**ids)
    if body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


# --- applications --------------------------------------------------------------------------------


def test_create_answers_the_application_without_its_token_and_stores_it_encrypted(
    tenant: Tenant,
) -> None:
    # given a key with the discord:manage scope only, and Discord's details of an application
    client = api_client_for(tenant, scopes=[MANAGE])
    body = create_body()
    token = body["bot_token"]
    # when it is registered
    response = client.post(APPS, body, format="json")
    # then the answer is the application, with the absolute URL Discord is to call
    assert response.status_code == 201, response.content
    created = response.json()
    assert set(created) == APPLICATION_FIELDS
    assert created["id"].startswith("dapp_")
    assert created["application_id"] == body["application_id"]
    assert created["public_key"] == body["public_key"]
    assert created["interactions_url"] == (
        f"{django_settings.PUBLIC_BASE_URL}/v1/discord/interactions/{created['id']}"
    )
    assert created["interactions_url"].startswith(("http://", "https://"))
    assert (created["upscale_model"], created["commands_registered_at"]) == ("", None)
    # and the token is nowhere in it, and stored encrypted, for the tenant
    stored = DiscordApplication.objects.get(public_id=created["id"])
    assert stored.tenant == tenant
    assert token not in stored.bot_token_encrypted
    assert token_decrypt(stored.bot_token_encrypted) == token
    assert token.encode() not in response.content
    assert stored.bot_token_encrypted.encode() not in response.content
    assert token not in repr(stored) and token not in str(stored)
    # and no later answer about it shows the token either
    one = f"{APPS}/{created['id']}"
    later = [
        client.get(APPS),
        client.get(one),
        client.patch(one, {"upscale_model": ""}, format="json"),
        client.put(f"{one}/guilds/{GUILD}", {}, format="json"),
        client.get(f"{one}/guilds"),
    ]
    for answer in later:
        assert answer.status_code in (200, 201), answer.content
        assert token.encode() not in answer.content
        assert stored.bot_token_encrypted.encode() not in answer.content


def test_update_changes_the_fields_given_and_encrypts_a_new_token(
    tenant: Tenant, model: Any
) -> None:
    # given an application
    application, old_token = new_application(tenant)
    client = api_client_for(tenant, scopes=[MANAGE])
    url = f"{APPS}/{application.public_id}"
    new_key, new_token = DiscordApp().public_key, bot_token()
    # when its key, token and upscale model are changed
    response = client.patch(
        url,
        {"public_key": new_key.upper(), "bot_token": new_token, "upscale_model": "tiny"},
        format="json",
    )
    # then they are, and the new token is stored encrypted and shown nowhere
    assert response.status_code == 200, response.content
    assert response.json()["public_key"] == new_key
    assert response.json()["upscale_model"] == "tiny"
    assert new_token.encode() not in response.content
    stored = DiscordApplication.objects.get(pk=application.pk)
    assert (stored.public_key, stored.upscale_model) == (new_key, "tiny")
    assert token_decrypt(stored.bot_token_encrypted) == new_token != old_token
    assert new_token not in stored.bot_token_encrypted
    # when only the upscale model is turned off, then the rest stays
    response = client.patch(url, {"upscale_model": ""}, format="json")
    assert response.status_code == 200, response.content
    stored.refresh_from_db()
    assert (stored.public_key, stored.upscale_model) == (new_key, "")
    assert token_decrypt(stored.bot_token_encrypted) == new_token
    assert (stored.application_id, stored.tenant_id) == (application.application_id, tenant.pk)


def test_delete_removes_the_application_and_its_policies(tenant: Tenant) -> None:
    # given two applications, one with a guild policy
    application, _ = new_application(tenant)
    kept, _ = new_application(tenant)
    GuildPolicy.objects.create(application=application, guild_id=GUILD)
    client = api_client_for(tenant, scopes=[MANAGE])
    # when the first is deleted
    response = client.delete(f"{APPS}/{application.public_id}")
    # then it is gone with its policy, and the other stays
    assert response.status_code == 204
    assert response.content == b""
    assert list(DiscordApplication.objects.all()) == [kept]
    assert not GuildPolicy.objects.exists()
    assert_error(client.get(f"{APPS}/{application.public_id}"), 404, "not_found")


def test_the_list_is_newest_first_a_page_at_a_time(tenant: Tenant) -> None:
    ids = [new_application(tenant)[0].public_id for _ in range(3)]
    client = api_client_for(tenant, scopes=[MANAGE])
    first = client.get(f"{APPS}?limit=2").json()
    assert [a["id"] for a in first["results"]] == ids[::-1][:2]
    assert first["previous"] is None and first["next"]
    second = client.get(first["next"]).json()
    assert [a["id"] for a in second["results"]] == ids[:1]
    assert second["next"] is None


def test_an_upscale_model_must_be_in_the_tenants_catalog(
    tenant: Tenant, other_tenant: Tenant, model: Any
) -> None:
    # given a public model, and a model private to another tenant
    private = DiffusionModelFactory(owner=other_tenant)
    client = api_client_for(tenant)
    # when an application names the public one, then it is registered with it
    ok = client.post(APPS, create_body(upscale_model="tiny"), format="json")
    assert ok.status_code == 201, ok.content
    assert ok.json()["upscale_model"] == "tiny"
    before = world_state()
    # and naming the other tenant's model, or none that exists, is a 400 that changes nothing
    for slug in (private.slug, "no-such-model"):
        created = client.post(APPS, create_body(upscale_model=slug), format="json")
        assert_error(created, 400, "invalid_input", "upscale_model")
        patched = client.patch(f"{APPS}/{ok.json()['id']}", {"upscale_model": slug}, format="json")
        assert_error(patched, 400, "invalid_input", "upscale_model")
    assert world_state() == before


def test_an_application_registered_by_anyone_is_a_409_that_names_no_one(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    # given an application registered by one tenant
    app = DiscordApp(bot_token=bot_token())
    first = api_client_for(tenant).post(APPS, create_body(app), format="json")
    assert first.status_code == 201, first.content
    before = world_state()
    # when another tenant, and then the same one, register it again (with another token)
    for client in (api_client_for(other_tenant), api_client_for(tenant)):
        again = client.post(APPS, create_body(app, bot_token=bot_token()), format="json")
        # then it is a 409 in the one error shape, which says nothing of the owner
        assert_error(again, 409, "conflict")
        text = again.content.decode()
        for secret in (tenant.name, str(tenant.pk), first.json()["id"], app.bot_token):
            assert secret not in text, text
    # and nothing changed
    assert world_state() == before


# (body, the error message's field path)
BAD_CREATES: list[tuple[dict[str, Any], str]] = [
    ({"application_id": "1234567890123456"}, "application_id"),  # 16 digits
    ({"application_id": "1" * 21}, "application_id"),
    ({"application_id": "12345678901234567a"}, "application_id"),
    ({"application_id": "123456789012345678\n"}, "application_id"),
    ({"application_id": " 123456789012345678"}, "application_id"),
    ({"application_id": "-12345678901234567"}, "application_id"),
    ({"application_id": 123456789012345678}, "application_id"),
    ({"application_id": None}, "application_id"),
    ({"application_id": ""}, "application_id"),
    ({"public_key": "ab" * 31}, "public_key"),
    ({"public_key": "ab" * 33}, "public_key"),
    ({"public_key": "zz" * 32}, "public_key"),
    ({"public_key": "00" * 32}, "public_key"),  # 64 hex digits, not a usable key
    ({"public_key": "ff" * 32}, "public_key"),
    ({"public_key": "ab" * 31 + "a\n"}, "public_key"),
    ({"public_key": 5}, "public_key"),
    ({"public_key": None}, "public_key"),
    ({"bot_token": ""}, "bot_token"),
    ({"bot_token": "a token"}, "bot_token"),
    ({"bot_token": "token\n"}, "bot_token"),
    ({"bot_token": "tök"}, "bot_token"),
    ({"bot_token": "x" * 101}, "bot_token"),
    ({"bot_token": 5}, "bot_token"),
    ({"bot_token": None}, "bot_token"),
    ({"upscale_model": "not a slug"}, "upscale_model"),
    ({"upscale_model": "x" * 41}, "upscale_model"),
    ({"upscale_model": None}, "upscale_model"),
    ({"upscale_model": "no-such-model"}, "upscale_model"),
    ({"tenant": "someone else"}, "tenant"),
    ({"id": "dapp_mine"}, "id"),
]


@pytest.mark.parametrize(("fields", "path"), BAD_CREATES, ids=repr)
def test_an_invalid_create_is_a_400_naming_the_field(
    tenant: Tenant, model: Any, fields: dict[str, Any], path: str
) -> None:
    response = api_client_for(tenant).post(APPS, create_body(**fields), format="json")
    assert_error(response, 400, "invalid_input", path)
    assert not DiscordApplication.objects.exists()


def test_a_missing_field_malformed_json_or_a_form_body_is_refused(tenant: Tenant) -> None:
    client = api_client_for(tenant)
    for field in ("application_id", "public_key", "bot_token"):
        body = create_body()
        del body[field]
        assert_error(client.post(APPS, body, format="json"), 400, "invalid_input", field)
    for raw in (b'{"application_id": "1', b"[]", b'"x"'):
        response = client.post(APPS, raw, content_type="application/json")
        assert response.status_code == 400, response.content
        assert set(response.json()["error"]) == {"code", "message", "details"}
    assert_error(client.post(APPS, create_body()), 415, "unsupported_media_type")
    assert not DiscordApplication.objects.exists()


BAD_PATCHES: list[tuple[dict[str, Any], str]] = [
    ({"public_key": "00" * 32}, "public_key"),
    ({"public_key": "not hex"}, "public_key"),
    ({"public_key": None}, "public_key"),
    ({"bot_token": ""}, "bot_token"),
    ({"bot_token": "two words"}, "bot_token"),
    ({"bot_token": None}, "bot_token"),
    ({"upscale_model": "no-such-model"}, "upscale_model"),
    ({"upscale_model": 1}, "upscale_model"),
    ({"application_id": "123456789012345678"}, "application_id"),
    ({"commands_registered_at": None}, "commands_registered_at"),
]


@pytest.mark.parametrize(("fields", "path"), BAD_PATCHES, ids=repr)
def test_an_invalid_patch_is_a_400_and_changes_nothing(
    tenant: Tenant, fields: dict[str, Any], path: str
) -> None:
    application, _ = new_application(tenant)
    before = world_state()
    response = api_client_for(tenant).patch(
        f"{APPS}/{application.public_id}", fields, format="json"
    )
    assert_error(response, 400, "invalid_input", path)
    assert world_state() == before


# --- guild policies ------------------------------------------------------------------------------


def test_put_creates_a_policy_then_replaces_it_whole(tenant: Tenant, model: Any) -> None:
    application, _ = new_application(tenant)
    client = api_client_for(tenant, scopes=[MANAGE])
    url = f"{APPS}/{application.public_id}/guilds/{GUILD}"
    policy = {
        "allowed_models": ["tiny", "tiny"],
        "allowed_channels": [CHANNEL],
        "max_steps": 30,
        "max_side": 768,
        "default_negative_prompt": "blurry",
        "daily_images_per_user": 20,
    }
    # when a guild's policy is put, then it is created (201), the repeated model once
    created = client.put(url, policy, format="json")
    assert created.status_code == 201, created.content
    assert set(created.json()) == POLICY_FIELDS
    assert {k: created.json()[k] for k in NO_LIMITS} == {**policy, "allowed_models": ["tiny"]}
    assert created.json()["guild_id"] == GUILD
    # when it is put again with one field, then it is replaced (200): the rest is back to no limit
    replaced = client.put(url, {"max_steps": 10}, format="json")
    assert replaced.status_code == 200, replaced.content
    assert {k: replaced.json()[k] for k in NO_LIMITS} == {**NO_LIMITS, "max_steps": 10}
    stored = GuildPolicy.objects.get()
    assert (stored.application, stored.guild_id, stored.max_steps) == (application, GUILD, 10)
    assert (stored.allowed_models, stored.allowed_channels) == ([], [])
    # and it reads back the same, alone and in the list
    assert client.get(url).json() == replaced.json()
    assert client.get(f"{APPS}/{application.public_id}/guilds").json()["results"] == [
        replaced.json()
    ]


def test_patch_changes_the_fields_given_and_delete_removes_the_policy(
    tenant: Tenant, model: Any
) -> None:
    application, _ = new_application(tenant)
    client = api_client_for(tenant, scopes=[MANAGE])
    url = f"{APPS}/{application.public_id}/guilds/{GUILD}"
    other_guild = f"{APPS}/{application.public_id}/guilds/{snowflake()}"
    # a guild without a policy: PATCH, GET and DELETE are 404s
    for method in ("get", "patch", "delete"):
        body = {"max_steps": 5} if method == "patch" else None
        assert_error(call(client, method, url, body), 404, "not_found")
    assert not GuildPolicy.objects.exists()
    # given policies of two guilds
    client.put(url, {"max_steps": 30, "max_side": 512, "allowed_models": ["tiny"]}, format="json")
    client.put(other_guild, {"max_steps": 7}, format="json")
    # when one is patched, then the fields given change, null included, and the rest stays
    patched = client.patch(url, {"max_steps": None, "daily_images_per_user": 3}, format="json")
    assert patched.status_code == 200, patched.content
    assert {k: patched.json()[k] for k in NO_LIMITS} == {
        **NO_LIMITS,
        "max_side": 512,
        "allowed_models": ["tiny"],
        "daily_images_per_user": 3,
    }
    # when it is deleted, then it is gone and the other guild's stays
    assert client.delete(url).status_code == 204
    assert_error(client.get(url), 404, "not_found")
    assert [p.max_steps for p in GuildPolicy.objects.all()] == [7]


BAD_POLICIES: list[tuple[dict[str, Any], str]] = [
    ({"allowed_models": ["no-such-model"]}, "allowed_models[0]"),
    ({"allowed_models": ["tiny", "not a slug"]}, "allowed_models[1]"),
    ({"allowed_models": "tiny"}, "allowed_models"),
    ({"allowed_models": [1]}, "allowed_models[0]"),
    ({"allowed_models": None}, "allowed_models"),
    ({"allowed_models": ["tiny"] * 101}, "allowed_models"),
    ({"allowed_channels": ["123"]}, "allowed_channels[0]"),
    ({"allowed_channels": [CHANNEL, 222222222222222222]}, "allowed_channels[1]"),
    ({"allowed_channels": CHANNEL}, "allowed_channels"),
    ({"max_steps": 0}, "max_steps"),
    ({"max_steps": 151}, "max_steps"),
    ({"max_steps": "30"}, "max_steps"),
    ({"max_steps": 1.5}, "max_steps"),
    ({"max_steps": True}, "max_steps"),
    ({"max_side": 56}, "max_side"),
    ({"max_side": 2056}, "max_side"),
    ({"max_side": 100}, "max_side"),
    ({"max_side": "512"}, "max_side"),
    ({"max_side": 2**40}, "max_side"),
    ({"default_negative_prompt": "x" * 2001}, "default_negative_prompt"),
    ({"default_negative_prompt": None}, "default_negative_prompt"),
    ({"default_negative_prompt": 5}, "default_negative_prompt"),
    ({"daily_images_per_user": 0}, "daily_images_per_user"),
    ({"daily_images_per_user": 2**40}, "daily_images_per_user"),
    ({"daily_images_per_user": "3"}, "daily_images_per_user"),
    ({"guild_id": GUILD}, "guild_id"),
    ({"max_images": 3}, "max_images"),
]


@pytest.mark.parametrize(("fields", "path"), BAD_POLICIES, ids=repr)
@pytest.mark.parametrize("method", ["put", "patch"])
def test_an_invalid_policy_is_a_400_and_changes_nothing(
    tenant: Tenant, other_tenant: Tenant, model: Any, method: str, fields: dict[str, Any], path: str
) -> None:
    # given a policy, and a model private to another tenant (which must not count as "tiny")
    DiffusionModelFactory(owner=other_tenant, slug="theirs")
    application, _ = new_application(tenant)
    GuildPolicy.objects.create(application=application, guild_id=GUILD, max_steps=9)
    before = world_state()
    # when it is put or patched with one bad field
    url = f"{APPS}/{application.public_id}/guilds/{GUILD}"
    response = call(api_client_for(tenant), method, url, fields)
    # then it is a 400 naming the field, and nothing changed
    assert_invalid(response, path)
    assert world_state() == before


def test_another_tenants_private_model_is_not_allowed_in_a_policy(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = DiffusionModelFactory(owner=other_tenant)
    ours = DiffusionModelFactory(owner=tenant)
    application, _ = new_application(tenant)
    url = f"{APPS}/{application.public_id}/guilds/{GUILD}"
    client = api_client_for(tenant)
    refused = client.put(url, {"allowed_models": [ours.slug, theirs.slug]}, format="json")
    assert_invalid(refused, "allowed_models[1]")
    assert not GuildPolicy.objects.exists()
    accepted = client.put(url, {"allowed_models": [ours.slug]}, format="json")
    assert accepted.status_code == 201, accepted.content


@pytest.mark.parametrize("guild", ["123", "1" * 21, "abcdefghijklmnopqr", "%20" + GUILD])
def test_a_guild_id_that_is_not_a_discord_id_is_a_404(tenant: Tenant, guild: str) -> None:
    application, _ = new_application(tenant)
    client = api_client_for(tenant)
    for method in ("get", "put", "patch", "delete"):
        url = f"{APPS}/{application.public_id}/guilds/{guild}"
        response = call(client, method, url, {} if method in ("put", "patch") else None)
        assert_error(response, 404, "not_found")
    assert not GuildPolicy.objects.exists()


# --- who may call it -----------------------------------------------------------------------------

APP = APPS + "/{app}"
POLICY = APP + "/guilds/{guild}"
OPERATIONS: list[tuple[str, str, Any]] = [
    ("get", APPS, None),
    ("post", APPS, "create"),
    ("get", APP, None),
    ("patch", APP, {"upscale_model": "", "bot_token": "taken"}),
    ("delete", APP, None),
    ("get", APP + "/guilds", None),
    ("get", POLICY, None),
    ("put", POLICY, {"max_steps": 1}),
    ("patch", POLICY, {"max_steps": 1}),
    ("delete", POLICY, None),
]
ON_AN_OBJECT = [op for op in OPERATIONS if "{" in op[1]]


@pytest.fixture
def owned(tenant: Tenant) -> dict[str, str]:
    """The tenant's application with a guild policy, by the ids the paths take."""
    application, _ = new_application(tenant)
    GuildPolicy.objects.create(application=application, guild_id=GUILD, max_steps=50)
    return {"app": application.public_id, "guild": GUILD}


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS, ids=str)
def test_a_key_without_the_discord_scope_gets_a_403_and_changes_nothing(
    tenant: Tenant,
    other_tenant: Tenant,
    owned: dict[str, str],
    method: str,
    path: str,
    body: Any,
) -> None:
    # given the owner's key and another tenant's key, both with every scope but discord:manage
    others = ["jobs:read", "jobs:write", "webhooks:manage"]
    before = world_state()
    for client in (api_client_for(tenant, others), api_client_for(other_tenant, others)):
        # when either calls the operation
        response = call(client, method, path, create_body() if body == "create" else body, **owned)
        # then it is a 403 naming the scope (checked before the object: no probing of ids)
        assert_error(response, 403, "forbidden")
        assert MANAGE in response.json()["error"]["message"]
    # and nothing changed
    assert world_state() == before


@pytest.mark.parametrize(("method", "path", "body"), ON_AN_OBJECT, ids=str)
def test_another_tenants_application_is_a_404_like_a_missing_one(
    tenant: Tenant,
    other_tenant: Tenant,
    owned: dict[str, str],
    method: str,
    path: str,
    body: Any,
) -> None:
    # given the tenant's application, and another tenant with one of its own for the same guild
    theirs, _ = new_application(other_tenant)
    GuildPolicy.objects.create(application=theirs, guild_id=GUILD)
    intruder = api_client_for(other_tenant)
    missing = {"app": "dapp_00000000000000000000", "guild": GUILD}
    before = world_state()
    # when the other tenant calls the operation on the tenant's application, and on a missing one
    on_theirs = call(intruder, method, path, body, **owned)
    on_missing = call(intruder, method, path, body, **missing)
    # then both are the same 404, but for the id
    assert_error(on_theirs, 404, "not_found")
    assert_error(on_missing, 404, "not_found")
    text = on_theirs.content.decode().replace(owned["app"], missing["app"])
    assert json.loads(text) == on_missing.json()
    # and nothing changed
    assert world_state() == before


@pytest.mark.parametrize(
    "raw_id",
    ["dapp_missing", "dapp%00x", "%F0%9F%A6%8A", "x" * 500, "%ED%A0%80", "dapp_x%20"],
    ids=["missing", "nul", "emoji", "long", "invalid-utf8", "space"],
)
def test_an_id_that_cannot_exist_is_a_404_never_a_500(tenant: Tenant, raw_id: str) -> None:
    # given a tenant with an application and a policy (a lookup that ignored the id would find them)
    new_application(tenant)
    client = api_client_for(tenant)
    client.raise_request_exception = False
    before = world_state()
    for method, path, body in ON_AN_OBJECT:
        response = call(client, method, path, body, app=raw_id, guild=GUILD)
        assert_error(response, 404, "not_found")
    assert world_state() == before


def test_each_tenant_lists_only_its_own(tenant: Tenant, other_tenant: Tenant) -> None:
    ours = [new_application(tenant)[0] for _ in range(2)]
    theirs, _ = new_application(other_tenant)
    GuildPolicy.objects.create(application=ours[0], guild_id=GUILD)
    GuildPolicy.objects.create(application=theirs, guild_id=snowflake())
    listed = api_client_for(tenant).get(APPS).json()["results"]
    assert sorted(a["id"] for a in listed) == sorted(a.public_id for a in ours)
    other_listed = api_client_for(other_tenant).get(APPS).json()["results"]
    assert [a["id"] for a in other_listed] == [theirs.public_id]
    policies = api_client_for(tenant).get(f"{APPS}/{ours[0].public_id}/guilds").json()
    assert [p["guild_id"] for p in policies["results"]] == [GUILD]


def test_the_owner_can_do_what_the_other_tenant_could_not(
    tenant: Tenant, owned: dict[str, str]
) -> None:
    client = api_client_for(tenant, scopes=[MANAGE])
    for method, path, body in ON_AN_OBJECT:
        if method == "delete":
            continue
        response = call(client, method, path, body, **owned)
        assert response.status_code == 200, (method, path, response.content)
    assert call(client, "delete", POLICY, None, **owned).status_code == 204
    assert call(client, "delete", APP, None, **owned).status_code == 204
    assert world_state() == {"DiscordApplication": [], "GuildPolicy": []}


def test_the_interactions_lookup_needs_no_tenant_and_finds_only_what_exists(
    tenant: Tenant,
) -> None:
    application, _ = new_application(tenant)
    found = application_by_public_id(application.public_id)
    assert found == application and found is not None and found.tenant == tenant
    assert application_by_public_id("dapp_00000000000000000000") is None


# --- the schema ----------------------------------------------------------------------------------

DISCORD_PATHS = {
    "/v1/discord/applications": {"get", "post"},
    "/v1/discord/applications/{app_id}": {"get", "patch", "delete"},
    "/v1/discord/applications/{app_id}/guilds": {"get"},
    "/v1/discord/applications/{app_id}/guilds/{guild_id}": {"get", "put", "patch", "delete"},
}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def test_the_schema_documents_every_discord_management_operation() -> None:
    document = fetch_schema()
    for path, methods in DISCORD_PATHS.items():
        assert set(document["paths"][path]) & METHODS == methods, path
        for method in methods:
            operation = document["paths"][path][method]
            assert operation["operationId"].startswith("discord_"), (path, method)
            assert operation["security"] == [{"ApiKey": []}], (path, method)
            assert {"400", "401", "403"} <= set(operation["responses"]), (path, method)
            if "{" in path:
                assert "404" in operation["responses"], (path, method)
    assert "409" in document["paths"]["/v1/discord/applications"]["post"]["responses"]
    put = document["paths"]["/v1/discord/applications/{app_id}/guilds/{guild_id}"]["put"]
    assert {"200", "201"} <= set(put["responses"])
    # and the token goes in, write-only, and never comes out
    schemas = document["components"]["schemas"]
    create = schemas["DiscordApplicationCreateRequest"]
    assert create["additionalProperties"] is False
    assert create["properties"]["bot_token"]["writeOnly"] is True
    assert set(create["required"]) == {"application_id", "public_key", "bot_token"}
    assert "bot_token" not in schemas["DiscordApplication"]["properties"]
    assert set(schemas["DiscordApplication"]["properties"]) == APPLICATION_FIELDS


def test_discord_answers_match_the_documented_schemas(tenant: Tenant, model: Any) -> None:
    document = fetch_schema()
    client = api_client_for(tenant)
    created = client.post(APPS, create_body(), format="json")
    a = created.json()["id"]
    one = "/v1/discord/applications/{app_id}"
    guild = f"{one}/guilds/{{guild_id}}"
    calls = [
        ("/v1/discord/applications", "post", created),
        ("/v1/discord/applications", "post", client.post(APPS, {}, format="json")),
        ("/v1/discord/applications", "get", client.get(APPS)),
        (one, "get", client.get(f"{APPS}/{a}")),
        (one, "patch", client.patch(f"{APPS}/{a}", {"upscale_model": "tiny"}, format="json")),
        (one, "patch", client.patch(f"{APPS}/{a}", {"upscale_model": "nope"}, format="json")),
        (guild, "put", client.put(f"{APPS}/{a}/guilds/{GUILD}", {}, format="json")),
        (guild, "put", client.put(f"{APPS}/{a}/guilds/{GUILD}", NO_LIMITS, format="json")),
        (guild, "patch", client.patch(f"{APPS}/{a}/guilds/{GUILD}", {}, format="json")),
        (guild, "get", client.get(f"{APPS}/{a}/guilds/{GUILD}")),
        (f"{one}/guilds", "get", client.get(f"{APPS}/{a}/guilds")),
        (one, "get", client.get(f"{APPS}/dapp_missing")),
    ]
    for path, method, response in calls:
        assert response.status_code < 500, (path, method, response.content)
        assert_documented(document, path, method, response)
    assert {r.status_code for _, _, r in calls} == {200, 201, 400, 404}
    deleted = client.delete(f"{APPS}/{a}")
    assert deleted.status_code == 204
    assert "content" not in document["paths"][one]["delete"]["responses"]["204"]


# --- registering the slash commands --------------------------------------------------------------


def test_the_command_registers_our_commands_with_the_bot_token(
    tenant: Tenant, fake_discord: FakeDiscord
) -> None:
    # given an application and another that is not asked for
    application, token = new_application(tenant)
    other, _ = new_application(tenant)
    out = io.StringIO()
    # when its commands are registered
    call_command("discord_commands_register", "--application", application.public_id, stdout=out)
    # then Discord got one PUT of our commands, as the bot
    (put,) = fake_discord.calls
    assert (put.method, put.path) == ("PUT", f"/applications/{application.application_id}/commands")
    assert put.headers["authorization"] == f"Bot {token}"
    assert put.json == command_definitions()
    # and the time is recorded; one line says so, without the token
    application.refresh_from_db()
    assert application.commands_registered_at is not None
    assert DiscordApplication.objects.get(pk=other.pk).commands_registered_at is None
    (line,) = out.getvalue().splitlines()
    assert application.public_id in line and "registered" in line
    assert token not in out.getvalue()


def test_every_application_is_registered_and_a_failure_exits_non_zero(
    tenant: Tenant, other_tenant: Tenant, fake_discord: FakeDiscord
) -> None:
    # given two tenants' applications, and Discord refusing the second one's token
    ok, ok_token = new_application(tenant)
    refused, refused_token = new_application(other_tenant)
    fake_discord.fail_next(
        "PUT",
        rf"/applications/{refused.application_id}/commands",
        401,
        {"message": "401: Unauthorized", "code": 0},
    )
    out = io.StringIO()
    # when every application's commands are registered
    with pytest.raises(CommandError, match="1 of 2"):
        call_command("discord_commands_register", stdout=out)
    # then both were tried, one line each; the one Discord refused is said to have failed
    assert len(fake_discord.calls_to("PUT", r"/applications/\d+/commands")) == 2
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert ok.public_id in lines[0] and "registered" in lines[0]
    assert refused.public_id in lines[1] and "failed" in lines[1] and "401" in lines[1]
    # and no token is printed
    for token in (ok_token, refused_token):
        assert token not in out.getvalue()
    assert DiscordApplication.objects.get(pk=ok.pk).commands_registered_at is not None
    assert DiscordApplication.objects.get(pk=refused.pk).commands_registered_at is None


def test_registering_an_unknown_application_is_an_error_and_calls_nothing(
    tenant: Tenant, fake_discord: FakeDiscord
) -> None:
    new_application(tenant)
    with pytest.raises(CommandError, match="dapp_00000000000000000000"):
        call_command("discord_commands_register", "--application", "dapp_00000000000000000000")
    assert fake_discord.calls == []


def test_a_tenant_registers_only_its_own_applications(
    tenant: Tenant, other_tenant: Tenant, fake_discord: FakeDiscord
) -> None:
    application, _ = new_application(tenant)
    before = world_state()
    with pytest.raises(NotFound):
        commands_register(tenant=other_tenant, public_id=application.public_id)
    assert fake_discord.calls == []
    assert world_state() == before
    registered = commands_register(tenant=tenant, public_id=application.public_id)
    assert registered.commands == len(command_definitions())


# --- the tokens' keys ----------------------------------------------------------------------------


def test_the_token_keys_rotate_without_downtime(tenant: Tenant, settings: Any) -> None:
    # given a bot token and an interaction token stored under the old key
    old_key = settings.DISCORD_TOKEN_KEYS[0]
    application, token = new_application(tenant)
    reply = DiscordReply.objects.create(
        application=application,
        job=JobFactory(tenant=tenant),
        interaction_id=snowflake(),
        token_encrypted=token_encrypt("interaction-token"),
        token_expires_at=timezone.now(),
        channel_id=CHANNEL,
        user_id=snowflake(),
        changed_at=timezone.now(),
    )
    # when a new key is put first and the tokens re-encrypted
    settings.DISCORD_TOKEN_KEYS = [Fernet.generate_key().decode(), old_key]
    out = io.StringIO()
    call_command("discord_tokens_reencrypt", stdout=out)
    assert out.getvalue().strip() == "re-encrypted 2 tokens"
    # then the old key can go: both still decrypt
    settings.DISCORD_TOKEN_KEYS = settings.DISCORD_TOKEN_KEYS[:1]
    application.refresh_from_db()
    reply.refresh_from_db()
    assert token_decrypt(application.bot_token_encrypted) == token
    assert token_decrypt(reply.token_encrypted) == "interaction-token"
