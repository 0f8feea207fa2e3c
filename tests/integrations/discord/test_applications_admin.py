"""The operators' Discord pages: applications (a write-only bot token, saved through the
services; guild policies added, changed and deleted under them by the API's rules; the "Register
slash commands" action) and the replies, read-only. A token is never on a page: not the bot's,
not an interaction's, nor their encrypted forms."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.html import escape

from integrations.discord.models import DiscordApplication, DiscordReply, GuildPolicy
from integrations.discord.services.applications import application_create, guild_policy_put
from integrations.discord.tokens import token_decrypt, token_encrypt
from tenants.models import Tenant
from tests.support.admin import admin_url, page_messages
from tests.support.discord import DiscordApp, snowflake
from tests.support.discord_api import FakeDiscord
from tests.support.factories import DiffusionModelFactory, JobFactory, TenantFactory

pytestmark = pytest.mark.django_db

GUILD = "111111111111111111"


def bot_token() -> str:
    return f"MTE{secrets.token_urlsafe(21)}.{secrets.token_urlsafe(5)}.{secrets.token_urlsafe(28)}"


def new_application(tenant: Tenant, **fields: Any) -> tuple[DiscordApplication, str]:
    app = DiscordApp(bot_token=bot_token())
    application = application_create(
        tenant=tenant,
        application_id=app.application_id,
        public_key=app.public_key,
        bot_token=app.bot_token,
        **fields,
    )
    return application, app.bot_token


def new_reply(application: DiscordApplication, **fields: Any) -> tuple[DiscordReply, str]:
    """A reply to a job started from Discord, and its interaction token."""
    token = f"itoken-{secrets.token_urlsafe(40)}"
    reply = DiscordReply.objects.create(
        application=application,
        job=JobFactory(tenant=application.tenant),
        interaction_id=snowflake(),
        token_encrypted=token_encrypt(token),
        token_expires_at=timezone.now(),
        guild_id=GUILD,
        channel_id="222222222222222222",
        user_id="333333333333333333",
        changed_at=timezone.now(),
        **fields,
    )
    return reply, token


@pytest.fixture
def operator(admin_user: User) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def assert_no_secret(response: Any, *secrets_: str) -> None:
    for secret in secrets_:
        assert secret.encode() not in response.content


def rows() -> dict[str, Any]:
    return {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in (DiscordApplication, GuildPolicy, DiscordReply)
    }


# --- pages ---------------------------------------------------------------------------------------


def test_the_application_list_shows_tenant_and_ids_but_no_token(operator: Client) -> None:
    # given two tenants' applications, one with an upscale model
    DiffusionModelFactory(slug="upscaler")
    acme, acme_token = new_application(TenantFactory(name="acme"), upscale_model="upscaler")
    globex, globex_token = new_application(TenantFactory(name="globex"))
    # when the list is opened
    response = operator.get(admin_url(DiscordApplication, "changelist"))
    # then it shows both with their tenant, ids and upscale model
    assert response.status_code == 200
    html = response.content.decode()
    for text in ("acme", "globex", acme.public_id, acme.application_id, "upscaler"):
        assert text in html
    assert set(response.context["cl"].result_list) == {acme, globex}
    # and no token, in clear or encrypted
    assert_no_secret(
        response, acme_token, globex_token, acme.bot_token_encrypted, globex.bot_token_encrypted
    )
    # and searching by Discord's id finds the one
    found = operator.get(admin_url(DiscordApplication, "changelist"), {"q": globex.application_id})
    assert list(found.context["cl"].result_list) == [globex]


def test_the_application_page_has_a_write_only_token_and_its_policies(operator: Client) -> None:
    # given an application with a guild policy
    application, token = new_application(TenantFactory())
    GuildPolicy.objects.create(
        application=application, guild_id=GUILD, default_negative_prompt="no watermark"
    )
    # when its page is opened
    response = operator.get(admin_url(DiscordApplication, "change", application.pk))
    # then the token can be set but is not there, in clear or encrypted
    assert response.status_code == 200
    assert_no_secret(response, token, application.bot_token_encrypted)
    assert "bot_token_encrypted" not in response.content.decode()
    form = response.context["adminform"].form
    assert set(form.fields) == {"public_key", "bot_token", "upscale_model"}
    assert 'type="password" name="bot_token"' in response.content.decode()
    # and its guild policy is shown, to be changed or deleted, and others can be added
    html = response.content.decode()
    assert GUILD in html and "no watermark" in html
    (inline,) = response.context["inline_admin_formsets"]
    assert inline.has_add_permission and inline.has_change_permission
    assert inline.has_delete_permission


def test_the_reply_pages_are_read_only_and_show_no_token(operator: Client) -> None:
    # given a reply that failed
    application, bot = new_application(TenantFactory())
    reply, token = new_reply(application, error="Missing Access", done=True)
    # when the list and the reply's page are opened
    listed = operator.get(admin_url(DiscordReply, "changelist"))
    page = operator.get(admin_url(DiscordReply, "change", reply.pk))
    # then they show the job, guild, channel, user, state and error
    assert listed.status_code == page.status_code == 200
    html = listed.content.decode()
    for text in (reply.job.public_id, GUILD, "222222222222222222", "333333333333333333"):
        assert text in html
    assert "Missing Access" in html
    # and no token of any kind
    for response in (listed, page):
        assert_no_secret(response, token, reply.token_encrypted, bot)
    assert "token_encrypted" not in page.content.decode()
    # and nothing on the page can be edited, nor a reply added
    assert list(page.context["adminform"].form.fields) == []
    assert operator.get(admin_url(DiscordReply, "add")).status_code == 403


@pytest.mark.parametrize("model", [DiscordApplication, DiscordReply], ids=lambda m: m.__name__)
def test_a_list_page_takes_as_many_queries_for_many_rows_as_for_one(
    operator: Client, model: type[Any]
) -> None:
    def one_more() -> None:
        application, _ = new_application(TenantFactory())
        new_reply(application)

    one_more()
    url = admin_url(model, "changelist")
    operator.get(url)
    with CaptureQueriesContext(connection) as few:
        operator.get(url)
    for _ in range(4):
        one_more()
    with CaptureQueriesContext(connection) as many:
        response = operator.get(url)
    assert response.context["cl"].result_count == 5
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]


# --- adding and changing -------------------------------------------------------------------------


def _add_form(tenant: Tenant, app: DiscordApp, **fields: str) -> dict[str, Any]:
    return {
        "tenant": str(tenant.pk),
        "application_id": app.application_id,
        "public_key": app.public_key,
        "bot_token": app.bot_token,
        "upscale_model": "",
        **_no_inline_changes(),
        **fields,
    }


def test_adding_an_application_encrypts_its_token(operator: Client) -> None:
    # given a tenant and Discord's details of an application
    tenant = TenantFactory()
    app = DiscordApp(bot_token=bot_token())
    # when the operator adds it
    response = operator.post(
        admin_url(DiscordApplication, "add"), _add_form(tenant, app), follow=True
    )
    # then it is the tenant's, with the token stored encrypted and shown on no page after
    assert response.status_code == 200
    application = DiscordApplication.objects.get()
    assert (application.tenant, application.application_id) == (tenant, app.application_id)
    assert application.public_id.startswith("dapp_")
    assert token_decrypt(application.bot_token_encrypted) == app.bot_token
    assert app.bot_token not in application.bot_token_encrypted
    assert_no_secret(response, app.bot_token, application.bot_token_encrypted)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"public_key": "00" * 32}, "public_key"),
        ({"public_key": "xyz"}, "public_key"),
        ({"application_id": "42"}, "application_id"),
        ({"bot_token": ""}, "bot_token"),
        ({"bot_token": "has space"}, "bot_token"),
        ({"upscale_model": "theirs"}, "upscale_model"),
        ({"upscale_model": "nothing-here"}, "upscale_model"),
    ],
    ids=repr,
)
def test_an_invalid_add_is_redisplayed_without_the_token(
    operator: Client, fields: dict[str, str], field: str
) -> None:
    # given a model private to another tenant
    DiffusionModelFactory(slug="theirs", owner=TenantFactory())
    app = DiscordApp(bot_token=bot_token())
    # when the operator adds an application with one bad field
    response = operator.post(
        admin_url(DiscordApplication, "add"), _add_form(TenantFactory(), app, **fields)
    )
    # then the form comes back naming it, nothing is added, and the token is not echoed
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not DiscordApplication.objects.exists()
    assert_no_secret(response, app.bot_token)


def test_an_application_registered_already_cannot_be_added_again(operator: Client) -> None:
    existing, _ = new_application(TenantFactory())
    before = rows()
    app = DiscordApp(application_id=existing.application_id, bot_token=bot_token())
    response = operator.post(admin_url(DiscordApplication, "add"), _add_form(TenantFactory(), app))
    assert response.status_code == 200
    assert "application_id" in response.context["adminform"].form.errors
    assert rows() == before


def test_changing_keeps_the_token_unless_a_new_one_is_given(operator: Client) -> None:
    # given an application, and another tenant's that must not change
    application, token = new_application(TenantFactory())
    other, _ = new_application(TenantFactory())
    untouched = DiscordApplication.objects.filter(pk=other.pk).values().get()
    url = admin_url(DiscordApplication, "change", application.pk)
    new_key = DiscordApp().public_key
    # when the key is changed and the token field left empty
    data = {"public_key": new_key, "bot_token": "", "upscale_model": "", **_no_inline_changes()}
    assert operator.post(url, data).status_code == 302
    # then the key is the new one, and the token the old one
    application.refresh_from_db()
    assert application.public_key == new_key
    assert token_decrypt(application.bot_token_encrypted) == token
    # when a new token is given, then it is stored encrypted in its place
    new_token = bot_token()
    assert operator.post(url, {**data, "bot_token": new_token}).status_code == 302
    application.refresh_from_db()
    assert token_decrypt(application.bot_token_encrypted) == new_token
    # and the application id and the tenant stayed, as did the other application
    assert DiscordApplication.objects.filter(pk=other.pk).values().get() == untouched


# --- guild policies ------------------------------------------------------------------------------

CHANNEL, OTHER_CHANNEL = "222222222222222222", "333333333333333333"


def policy_row(application: DiscordApplication, **fields: str) -> dict[str, str]:
    """One row of the policies inline, every rule empty (no limit) unless given."""
    return {
        "application": str(application.pk),
        "guild_id": GUILD,
        "allowed_models": "",
        "allowed_channels": "",
        "max_steps": "",
        "max_side": "",
        "default_negative_prompt": "",
        "daily_images_per_user": "",
        **fields,
    }


def change_form(application: DiscordApplication, *rows: dict[str, str], initial: int = 0) -> Any:
    """The application's page as posted: its own fields unchanged, and these policy rows."""
    return {
        "public_key": application.public_key,
        "bot_token": "",
        "upscale_model": application.upscale_model,
        **_policy_rows(*rows, initial=initial),
    }


def policy_of(application: DiscordApplication) -> dict[str, Any]:
    return GuildPolicy.objects.filter(application=application).values(*GuildPolicy.RULES).get()


def test_an_operator_adds_a_guild_policy_on_the_application_page(operator: Client) -> None:
    # given an application, a public model and one of its tenant's own
    tenant = TenantFactory()
    application, _ = new_application(tenant)
    DiffusionModelFactory(slug="tiny")
    DiffusionModelFactory(slug="mine", owner=tenant)
    # when the operator adds a policy with lists written separated by commas, with repeats
    row = policy_row(
        application,
        allowed_models="tiny, mine,tiny",
        allowed_channels=f"{CHANNEL}, {OTHER_CHANNEL}, {CHANNEL}",
        max_steps="30",
        max_side="768",
        default_negative_prompt="blurry",
        daily_images_per_user="20",
    )
    url = admin_url(DiscordApplication, "change", application.pk)
    response = operator.post(url, change_form(application, row))
    # then the page saves, and the policy is stored as the API would store it
    assert response.status_code == 302, response.context and response.context["errors"]
    assert policy_of(application) == {
        "allowed_models": ["tiny", "mine"],
        "allowed_channels": [CHANNEL, OTHER_CHANNEL],
        "max_steps": 30,
        "max_side": 768,
        "default_negative_prompt": "blurry",
        "daily_images_per_user": 20,
    }
    assert GuildPolicy.objects.get().guild_id == GUILD
    # and the page shows the lists as they are entered
    html = operator.get(url).content.decode()
    assert 'value="tiny, mine"' in html
    assert f'value="{CHANNEL}, {OTHER_CHANNEL}"' in html


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"allowed_models": "tiny, nothing-here"}, "allowed_models", "no model 'nothing-here'"),
        ({"allowed_models": "theirs"}, "allowed_models", "no model 'theirs' in the catalog"),
        ({"allowed_models": "tiny, ti ny!"}, "allowed_models", "Must be a model's slug"),
        ({"allowed_channels": f"{CHANNEL}, general"}, "allowed_channels", "Discord id"),
        ({"max_side": "700"}, "max_side", "Must be a multiple of 8."),
        ({"max_side": "4096"}, "max_side", "less than or equal to 2048"),
        ({"max_steps": "0"}, "max_steps", "greater than or equal to 1"),
        ({"max_steps": "151"}, "max_steps", "less than or equal to 150"),
        ({"daily_images_per_user": "0"}, "daily_images_per_user", "greater than or equal to 1"),
        ({"guild_id": "42"}, "guild_id", "Must be a Discord id: 17 to 20 digits."),
        ({"guild_id": ""}, "guild_id", "This field is required."),
    ],
    ids=repr,
)
def test_a_bad_policy_is_refused_with_a_message_and_nothing_is_stored(
    operator: Client, fields: dict[str, str], field: str, message: str
) -> None:
    # given an application, a public model, and a model private to another tenant
    application, _ = new_application(TenantFactory())
    DiffusionModelFactory(slug="tiny")
    DiffusionModelFactory(slug="theirs", owner=TenantFactory())
    before = rows()
    # when the operator adds a policy with one bad value
    response = operator.post(
        admin_url(DiscordApplication, "change", application.pk),
        change_form(application, policy_row(application, **fields)),
    )
    # then the page comes back with the message on the row's field, and nothing changed
    assert response.status_code == 200
    (inline,) = response.context["inline_admin_formsets"]
    (errors,) = inline.formset.errors
    assert list(errors) == [field]
    assert any(message in text for text in errors[field]), errors
    assert escape(errors[field][0]) in response.content.decode()
    assert rows() == before


@pytest.mark.parametrize("page_shows_it", [True, False], ids=["shown", "stale-page"])
def test_a_second_policy_for_a_guild_is_refused(operator: Client, page_shows_it: bool) -> None:
    # given an application with a policy for the guild
    application, _ = new_application(TenantFactory())
    policy, _ = guild_policy_put(
        tenant=application.tenant, public_id=application.public_id, guild_id=GUILD, max_steps=30
    )
    before = rows()
    # when the operator adds another for the same guild, on a page that shows the first policy
    # or on one opened before it was made
    existing = [policy_row(application, id=str(policy.pk), max_steps="30")] if page_shows_it else []
    added = policy_row(application, max_steps="50")
    response = operator.post(
        admin_url(DiscordApplication, "change", application.pk),
        change_form(application, *existing, added, initial=len(existing)),
    )
    # then the page comes back saying so, and the first policy stays as it was
    assert response.status_code == 200
    (inline,) = response.context["inline_admin_formsets"]
    assert inline.formset.errors[-1] == {
        "__all__": ["Guild policy with this Application and Guild id already exists."]
    }
    assert rows() == before


def test_a_policy_is_changed_and_deleted_on_the_application_page(operator: Client) -> None:
    # given two applications with a policy each
    tenant = TenantFactory()
    application, _ = new_application(tenant)
    other, _ = new_application(TenantFactory())
    DiffusionModelFactory(slug="tiny")
    for app in (application, other):
        guild_policy_put(
            tenant=app.tenant,
            public_id=app.public_id,
            guild_id=GUILD,
            allowed_channels=[CHANNEL],
            max_steps=30,
        )
    policy = GuildPolicy.objects.get(application=application)
    untouched = GuildPolicy.objects.filter(application=other).values().get()
    url = admin_url(DiscordApplication, "change", application.pk)
    existing = {"id": str(policy.pk), "allowed_channels": CHANNEL, "max_steps": "30"}
    # when the operator changes its rules (and tries to move it to another guild)
    changed = policy_row(
        application,
        **{
            **existing,
            "guild_id": "999999999999999999",
            "allowed_models": "tiny",
            "max_steps": "",
            "max_side": "512",
        },
    )
    response = operator.post(url, change_form(application, changed, initial=1))
    # then the rules are the new ones, the guild the same
    assert response.status_code == 302, response.context and response.context["errors"]
    assert policy_of(application) == {
        "allowed_models": ["tiny"],
        "allowed_channels": [CHANNEL],
        "max_steps": None,
        "max_side": 512,
        "default_negative_prompt": "",
        "daily_images_per_user": None,
    }
    assert GuildPolicy.objects.get(pk=policy.pk).guild_id == GUILD
    # when the operator deletes it
    deleted = policy_row(application, **existing, DELETE="on")
    response = operator.post(url, change_form(application, deleted, initial=1))
    # then it is gone, and the other application's policy stayed as it was
    assert response.status_code == 302
    assert not GuildPolicy.objects.filter(application=application).exists()
    assert GuildPolicy.objects.filter(application=other).values().get() == untouched


# --- registering the slash commands --------------------------------------------------------------


def test_the_register_action_registers_each_selected_application(
    operator: Client, fake_discord: FakeDiscord
) -> None:
    # given two tenants' applications, Discord refusing the second one's token, and a third
    ok, ok_token = new_application(TenantFactory())
    refused, refused_token = new_application(TenantFactory())
    unselected, _ = new_application(TenantFactory())
    fake_discord.fail_next("PUT", rf"/applications/{refused.application_id}/commands", 401)
    # when the operator registers the first two
    response = operator.post(
        admin_url(DiscordApplication, "changelist"),
        {"action": "register_commands", "_selected_action": [ok.pk, refused.pk]},
        follow=True,
    )
    # then Discord got one PUT each, as each bot
    assert response.status_code == 200
    puts = fake_discord.calls_to("PUT", r"/applications/\d+/commands")
    assert sorted(c.headers["authorization"] for c in puts) == sorted(
        [f"Bot {ok_token}", f"Bot {refused_token}"]
    )
    # and the page says which was registered and which failed, without a token
    texts = page_messages(response)
    assert any(ok.public_id in t and "registered" in t for t in texts), texts
    assert any(refused.public_id in t and "not registered" in t for t in texts), texts
    assert_no_secret(response, ok_token, refused_token)
    # and only the registered one records when
    registered = {
        a.pk: a.commands_registered_at is not None for a in DiscordApplication.objects.all()
    }
    assert registered == {ok.pk: True, refused.pk: False, unselected.pk: False}


def _no_inline_changes() -> dict[str, str]:
    """The management form of the policies inline with no rows, as the page posts it."""
    return _policy_rows()


def _policy_rows(*rows: dict[str, str], initial: int = 0) -> dict[str, str]:
    """The policies inline as the page posts it: the management form, then each row (the first
    `initial` ones are existing policies, with their "id")."""
    prefix = "guild_policies"
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(rows):
        data.update({f"{prefix}-{index}-{name}": value for name, value in row.items()})
    return data
