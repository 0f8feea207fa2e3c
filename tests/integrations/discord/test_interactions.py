"""The interactions endpoint: who may act, what each interaction does, and what is refused.

The 1,000 mutated requests over real HTTP are in tests/e2e/test_discord.py."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from integrations.discord.models import DiscordReply, GuildPolicy, HandledInteraction
from integrations.discord.tokens import token_decrypt
from jobs.models import Job
from tests.integrations.discord.conftest import Post, result_of
from tests.support.discord import DiscordApp, body_of
from tests.support.factories import DiffusionModelFactory, PlanFactory, TenantFactory

pytestmark = pytest.mark.django_db

GUILD, CHANNEL, USER = "111111111111111111", "222222222222222222", "333333333333333333"
EPHEMERAL = 64


def refusal_text(response: Any) -> str:
    """The text of an answer seen only by the user (type 4, ephemeral)."""
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["type"] == 4 and answer["data"]["flags"] == EPHEMERAL, answer
    return str(answer["data"]["content"])


def test_a_ping_is_answered_with_a_pong(post: Post, discord_app: DiscordApp) -> None:
    response = post(discord_app.interaction(1))
    assert response.status_code == 200
    assert response.json() == {"type": 1}


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda h: h.pop("X-Signature-Ed25519"), id="no signature"),
        pytest.param(lambda h: h.pop("X-Signature-Timestamp"), id="no timestamp"),
        pytest.param(lambda h: h.update({"X-Signature-Ed25519": "ab" * 64}), id="bad signature"),
        pytest.param(lambda h: h.update({"X-Signature-Ed25519": "zz"}), id="malformed"),
        pytest.param(
            lambda h: h.update({"X-Signature-Timestamp": str(int(h["X-Signature-Timestamp"]) + 1)}),
            id="timestamp not the signed one",
        ),
    ],
)
def test_a_request_without_a_good_signature_is_refused_401_with_nothing_done(
    application: Any, discord_app: DiscordApp, spoil: Any
) -> None:
    body = body_of(discord_app.imagine(prompt="a fox"))
    headers = discord_app.headers(body)
    spoil(headers)
    response = Client().post(
        f"/v1/discord/interactions/{application.public_id}",
        body,
        content_type="application/json",
        headers={k: v for k, v in headers.items() if k != "Content-Type"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_interaction"
    assert not Job.objects.exists() and not HandledInteraction.objects.exists()


@pytest.mark.parametrize("skew", [-301, 301, -86400])
def test_a_timestamp_more_than_five_minutes_off_is_refused(
    post: Post, discord_app: DiscordApp, skew: int
) -> None:
    response = post(discord_app.imagine(prompt="a fox"), timestamp=int(time.time()) + skew)
    assert response.status_code == 401
    assert not Job.objects.exists()


def test_a_replayed_interaction_is_refused_and_makes_no_second_job(
    post: Post, discord_app: DiscordApp
) -> None:
    payload = discord_app.imagine(prompt="a fox")
    assert post(payload).json() == {"type": 5}
    again = post(payload)
    assert again.status_code == 401
    assert Job.objects.count() == 1


def test_imagine_defers_and_makes_an_ordinary_job_of_the_tenant_marked_with_its_origin(
    post: Post, discord_app: DiscordApp, application: Any, tenant: Any
) -> None:
    payload = discord_app.imagine(
        prompt="a fox", negative_prompt="blur", size="768x512", steps=12, seed=42
    )
    response = post(payload)
    assert response.status_code == 200
    assert response.json() == {"type": 5}
    job = Job.objects.get()
    assert job.tenant == tenant and job.model.slug == "tiny"
    assert job.origin == {
        "type": "discord",
        "guild_id": GUILD,
        "channel_id": CHANNEL,
        "user_id": USER,
    }
    spec = job.input
    assert (spec["prompt"], spec["negative_prompt"], spec["seed"]) == ("a fox", "blur", 42)
    assert (spec["width"], spec["height"], spec["steps"]) == (768, 512, 12)
    reply = DiscordReply.objects.get(job=job)
    assert reply.application == application and reply.user_id == USER
    assert payload["token"] not in reply.token_encrypted
    assert token_decrypt(reply.token_encrypted) == payload["token"]


def test_the_job_shows_its_origin_in_the_api(post: Post, discord_app: DiscordApp, client) -> None:  # type: ignore[no-untyped-def]
    post(discord_app.imagine(prompt="a fox"))
    job = Job.objects.get()
    shown = client.get(f"/v1/jobs/{job.public_id}").json()
    assert shown["origin"]["type"] == "discord" and shown["origin"]["user_id"] == USER
    by_api = client.post("/v1/jobs", {"model": "tiny", "prompt": "a fox"}, format="json").json()
    assert by_api["origin"] == {"type": "api"}


def test_an_interaction_signed_by_tenant_a_cannot_make_a_job_for_tenant_b(
    post: Post, discord_app: DiscordApp, application: Any
) -> None:
    # given tenant B's application beside tenant A's
    app_b = DiscordApp()
    application_b = app_b.register(TenantFactory())
    # when A's key signs an interaction sent to B's endpoint, or carrying B's application id
    to_b = post(discord_app.imagine(prompt="a fox"), to=application_b)
    payload = discord_app.imagine(prompt="a fox")
    payload["application_id"] = app_b.application_id
    with_b_id = post(payload)
    # then both are refused and no job exists for anyone
    assert (to_b.status_code, with_b_id.status_code) == (401, 401)
    assert not Job.objects.exists()


def test_an_unknown_application_is_404(discord_app: DiscordApp, db: None) -> None:
    body = body_of(discord_app.interaction(1))
    response = Client().post(
        "/v1/discord/interactions/dapp_00000000000000000000",
        body,
        content_type="application/json",
        headers={k: v for k, v in discord_app.headers(body).items() if k != "Content-Type"},
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("policy", "options", "says"),
    [
        ({"allowed_channels": ["444444444444444444"]}, {}, "<#444444444444444444>"),
        ({"allowed_models": ["other"]}, {"model": "tiny"}, "`other`"),
        ({"max_steps": 10}, {"steps": 11}, "At most 10 steps"),
        ({"max_side": 512}, {"size": "768x768"}, "at most 512 pixels"),
    ],
)
def test_a_guild_policy_refuses_with_a_clear_message_and_no_job(
    post: Post,
    discord_app: DiscordApp,
    application: Any,
    policy: dict[str, Any],
    options: dict[str, Any],
    says: str,
) -> None:
    DiffusionModelFactory(slug="other")
    GuildPolicy.objects.create(application=application, guild_id=GUILD, **policy)
    text = refusal_text(post(discord_app.imagine(prompt="a fox", **options)))
    assert says in text
    assert not Job.objects.exists()


def test_the_daily_cap_per_user_refuses_the_next_image_and_counts_per_user(
    post: Post, discord_app: DiscordApp, application: Any
) -> None:
    GuildPolicy.objects.create(application=application, guild_id=GUILD, daily_images_per_user=2)
    for _ in range(2):
        assert post(discord_app.imagine(prompt="a fox")).json() == {"type": 5}
    text = refusal_text(post(discord_app.imagine(prompt="a fox")))
    assert "2 images for today" in text
    assert post(discord_app.imagine(prompt="a fox", user_id="555555555555555555")).json() == {
        "type": 5
    }
    assert Job.objects.count() == 3


def test_the_default_negative_prompt_of_the_guild_applies(
    post: Post, discord_app: DiscordApp, application: Any
) -> None:
    GuildPolicy.objects.create(
        application=application, guild_id=GUILD, default_negative_prompt="watermark"
    )
    post(discord_app.imagine(prompt="a fox"))
    assert Job.objects.get().input["negative_prompt"] == "watermark"


def test_a_quota_refusal_is_a_clear_message_and_no_job(
    discord_app: DiscordApp, db: None, model: Any
) -> None:
    tenant = TenantFactory(plan=PlanFactory(monthly_credits=0))
    application = discord_app.register(tenant)
    body = body_of(discord_app.imagine(prompt="a fox"))
    response = Client().post(
        f"/v1/discord/interactions/{application.public_id}",
        body,
        content_type="application/json",
        headers={k: v for k, v in discord_app.headers(body).items() if k != "Content-Type"},
    )
    assert "credits" in refusal_text(response).lower()
    assert not Job.objects.exists()


def test_an_input_the_model_refuses_is_a_clear_message(post: Post, discord_app: DiscordApp) -> None:
    text = refusal_text(post(discord_app.imagine(prompt="a fox", model="nope")))
    assert "unknown model 'nope'" in text
    assert not Job.objects.exists()


def test_reroll_makes_one_job_with_a_new_seed_however_often_it_is_clicked(
    post: Post, discord_app: DiscordApp, application: Any
) -> None:
    source = result_of(application, user_id=USER)
    first = post(discord_app.click(f"reroll:{source.public_id}", "999999999999999999"))
    second = post(discord_app.click(f"reroll:{source.public_id}", "999999999999999999"))
    assert first.json() == {"type": 5}
    assert "Already on it" in refusal_text(second)
    [job] = Job.objects.exclude(pk=source.pk)
    assert job.input["prompt"] == source.input["prompt"]
    assert job.input["seed"] != source.input["seed"]
    assert DiscordReply.objects.filter(job=job).exists()


def test_vary_makes_an_img2img_job_from_the_result_at_the_chosen_strength(
    post: Post, discord_app: DiscordApp, application: Any
) -> None:
    source = result_of(application, user_id=USER)
    assert post(discord_app.click(f"vary:{source.public_id}:0.7", "999999999999999999")).json() == {
        "type": 5
    }
    job = Job.objects.exclude(pk=source.pk).get()
    assert job.kind == "img2img" and job.init_image_key == source.output_keys[0]
    assert (job.input["image"], job.input["strength"]) == (source.public_id, 0.7)


def test_upscale_needs_an_upscale_model_and_doubles_the_size(
    post: Post, discord_app: DiscordApp, application: Any
) -> None:
    source = result_of(application, user_id=USER)
    refused = post(discord_app.click(f"upscale:{source.public_id}", "999999999999999999"))
    assert "not available" in refusal_text(refused)
    DiffusionModelFactory(slug="upscaler", max_side=2048)
    application.upscale_model = "upscaler"
    application.save()
    assert post(discord_app.click(f"upscale:{source.public_id}", "999999999999999998")).json() == {
        "type": 5
    }
    job = Job.objects.exclude(pk=source.pk).get()
    assert job.model.slug == "upscaler" and job.kind == "img2img"
    assert (job.input["width"], job.input["height"]) == (1024, 1024)


def test_delete_is_for_the_asker_or_a_moderator(
    post: Post, discord_app: DiscordApp, application: Any, django_capture_on_commit_callbacks: Any
) -> None:
    source = result_of(application, user_id=USER)
    stranger = post(
        discord_app.click(f"delete:{source.public_id}", "999999999999999999", user_id="7" * 18)
    )
    assert "Only the one who asked" in refusal_text(stranger)
    with django_capture_on_commit_callbacks() as callbacks:
        asker = post(discord_app.click(f"delete:{source.public_id}", "999999999999999999"))
        moderator = post(
            discord_app.click(
                f"delete:{source.public_id}",
                "999999999999999999",
                user_id="8" * 18,
                permissions=1 << 13,
            )
        )
    assert asker.json() == {"type": 6} and moderator.json() == {"type": 6}
    assert len(callbacks) == 2


def test_a_button_on_another_tenants_result_does_nothing(
    post: Post, discord_app: DiscordApp
) -> None:
    other = DiscordApp().register(TenantFactory())
    source = result_of(other, user_id=USER)
    text = refusal_text(post(discord_app.click(f"reroll:{source.public_id}", "999999999999999999")))
    assert "no longer available" in text
    assert Job.objects.count() == 1


def test_autocomplete_offers_the_tenants_models_the_guild_allows(
    post: Post, discord_app: DiscordApp, application: Any
) -> None:
    DiffusionModelFactory(slug="tiny-xl")
    DiffusionModelFactory(slug="big")
    DiffusionModelFactory(slug="tiny-private", owner=TenantFactory())
    GuildPolicy.objects.create(
        application=application, guild_id=GUILD, allowed_models=["tiny", "tiny-xl", "big"]
    )
    data = {
        "name": "imagine",
        "type": 1,
        "options": [{"name": "model", "type": 3, "value": "tin", "focused": True}],
    }
    answer = post(discord_app.interaction(4, data)).json()
    assert answer["type"] == 8
    assert [c["value"] for c in answer["data"]["choices"]] == ["tiny", "tiny-xl"]


def post_signed(application: Any, discord_app: DiscordApp, body: bytes) -> Any:
    """POST `body` as it is, signed by the application's key."""
    return Client().post(
        f"/v1/discord/interactions/{application.public_id}",
        body,
        content_type="application/json",
        headers={k: v for k, v in discord_app.headers(body).items() if k != "Content-Type"},
    )


def _spoiled(discord_app: DiscordApp, spoil: Any) -> dict[str, Any]:
    payload = discord_app.imagine(prompt="a fox")
    spoil(payload)
    return payload


# Signed bodies (only the key's holder can send them) of another shape than Discord's.
SIGNED_BUT_MALFORMED = {
    "member not an object": lambda p: p.update(member="x"),
    "member a list": lambda p: p.update(member=[1]),
    "member.user not an object": lambda p: p["member"].update(user="x"),
    "channel not an object": lambda p: (p.pop("channel_id"), p.update(channel="x")),
    "type infinite": lambda p: p.update(type=float("inf")),
    "type a boolean": lambda p: p.update(type=True),
    "permissions infinite": lambda p: p["member"].update(permissions=float("inf")),
    "id with a lone surrogate": lambda p: p.update(id="12\ud800"),
    "id of 30 digits": lambda p: p.update(id="1" * 30),
    "guild_id with NUL": lambda p: p.update(guild_id="1" * 18 + "\x00"),
    "channel_id of 25 digits": lambda p: p.update(channel_id="2" * 25),
    "user id a list": lambda p: p["member"]["user"].update(id=[1]),
    "token with a lone surrogate": lambda p: p.update(token="t\ud800"),
    "data a list": lambda p: p.update(data=[["name", "imagine"]]),
    "options a string": lambda p: p["data"].update(options="x"),
    "options of numbers": lambda p: p["data"].update(options=[1]),
    "options an object": lambda p: p["data"].update(options={"a": 1}),
    "option without a name": lambda p: p["data"].update(options=[{"value": 1}]),
}


@pytest.mark.parametrize("spoil", SIGNED_BUT_MALFORMED.values(), ids=SIGNED_BUT_MALFORMED.keys())
def test_a_signed_body_of_another_shape_is_a_400_and_changes_nothing(
    post: Post, discord_app: DiscordApp, spoil: Any
) -> None:
    response = post(_spoiled(discord_app, spoil))
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and "not an interaction" in error["message"]
    assert not Job.objects.exists() and not HandledInteraction.objects.exists()


def test_a_signed_body_nested_past_the_parsers_depth_is_a_400(
    application: Any, discord_app: DiscordApp
) -> None:
    response = post_signed(application, discord_app, b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


# Options Discord's own checks would refuse (the command's min and max, its choices), sent anyway.
REFUSED_OPTIONS = [
    ({"steps": -5}, "steps: Ensure this value is greater than or equal to 1."),
    ({"seed": -1}, "seed: Ensure this value is greater than or equal to 0."),
    ({"seed": 2**70}, "seed: Ensure this value is less than or equal to"),
    ({"steps": "abc"}, "steps: Must be an integer, not a string."),
    ({"steps": 1.5}, "steps: Must be an integer, not a number."),
    ({"size": "100x100"}, "width: Must be a multiple of 8"),
    ({"prompt": ""}, "prompt: This field may not be blank."),
    ({"prompt": "x" * 100_000}, "prompt: Ensure this field has no more than"),
    ({"prompt": "a \x00 fox"}, "prompt: Null characters are not allowed."),
    ({"model": ["tiny"]}, "model: Must be a string, not an array."),
    ({"lora": "not a slug!"}, "loras[0].slug: Must be a slug"),
]


@pytest.mark.parametrize(("options", "said"), REFUSED_OPTIONS)
def test_imagine_checks_its_options_as_the_rest_api_checks_a_job(
    post: Post, discord_app: DiscordApp, options: dict[str, Any], said: str
) -> None:
    text = refusal_text(post(discord_app.imagine(**{"prompt": "a fox", **options})))
    assert said in text, text
    assert not Job.objects.exists()


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete", "options"])
def test_another_method_is_a_405_in_the_error_shape(application: Any, method: str) -> None:
    response = getattr(Client(), method)(f"/v1/discord/interactions/{application.public_id}")
    assert (response.status_code, response["Allow"]) == (405, "POST")
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_a_body_past_the_limit_is_a_413_in_the_error_shape(
    application: Any, discord_app: DiscordApp, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = post_signed(
        application, discord_app, body_of(discord_app.imagine(prompt="x" * 2048))
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not Job.objects.exists()
