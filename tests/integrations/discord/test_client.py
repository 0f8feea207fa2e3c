"""integrations.discord.client against FakeDiscord over real HTTP: each call's request, the
multipart shape, 429s and buckets waited out or failed as retryable, errors that say whether a
retry can help, and tokens kept out of errors and logs."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from integrations.discord.client import Attachment, DiscordClient, DiscordError, discord_client
from tests.support.discord_api import FakeDiscord

APP = "1170000000000000001"
TOKEN = "aW50ZXJhY3Rpb246MTE3MDAwMDAwMDAwMDAwMDAwMTpzZWNyZXQ"
OTHER_TOKEN = "aW50ZXJhY3Rpb246b3RoZXI6c2VjcmV0LXRva2Vu"
BOT = "MTE3MDAwMDAwMDAwMDAwMDAwMQ.GabcDe.bot-secret-0123456789"
OTHER_BOT = "MTE3MDAwMDAwMDAwMDAwMDAwMg.GfghIj.bot-secret-9876543210"
CHANNEL = "1190000000000000001"
OTHER_CHANNEL = "1190000000000000002"
ORIGINAL = rf"/webhooks/{APP}/[^/]+/messages/@original"
MESSAGES = r"/channels/\d+/messages"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
SECRETS = (TOKEN, OTHER_TOKEN, BOT, OTHER_BOT)


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(bot_tokens={BOT, OTHER_BOT}) as server:
        yield server


@pytest.fixture
def client(fake: FakeDiscord, settings: Any) -> DiscordClient:
    settings.DISCORD_API_BASE = fake.api_base
    settings.DISCORD_MAX_WAIT_S = 1.0
    return DiscordClient()


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def failing(call: Any, **kwargs: Any) -> DiscordError:
    with pytest.raises(DiscordError) as caught:
        call(**kwargs)
    assert_no_secret(str(caught.value))
    assert_no_secret(repr(caught.value))
    return caught.value


def send(client: DiscordClient, channel: str = CHANNEL, bot: str = BOT) -> dict[str, Any]:
    return client.channel_message_create(
        bot_token=bot, channel_id=channel, payload={"content": "hi"}
    )


def edit_original(client: DiscordClient, token: str = TOKEN) -> dict[str, Any]:
    return client.interaction_original_edit(
        application_id=APP, token=token, payload={"content": "x"}
    )


# --- the requests ----------------------------------------------------------------------------


def test_editing_the_original_sends_json_without_authorization(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # when the deferred reply is edited without files
    message = client.interaction_original_edit(
        application_id=APP, token=TOKEN, payload={"content": "done"}
    )
    # then one PATCH went to the interaction webhook route, with no Authorization
    [call] = fake.calls
    assert (call.method, call.path) == ("PATCH", f"/webhooks/{APP}/{TOKEN}/messages/@original")
    assert "authorization" not in call.headers
    assert call.headers["user-agent"].startswith("DiscordBot (")
    assert call.headers["content-type"] == "application/json"
    assert call.json == {"content": "done"}
    # and the message object came back
    assert message["content"] == "done"
    assert message["id"] == fake.original(TOKEN)["id"]


def test_files_go_as_multipart_with_payload_json_and_attachments(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # given a reply that already shows one image
    first = client.interaction_original_edit(
        application_id=APP,
        token=TOKEN,
        payload={"content": "1 of 2", "attachments": [{"id": 0, "description": "a cat"}]},
        files=[Attachment("0.png", PNG, "image/png")],
    )
    [kept] = first["attachments"]
    # when it is edited again with a second image, listing the first to keep it
    second = client.interaction_original_edit(
        application_id=APP,
        token=TOKEN,
        payload={"content": "2 of 2", "attachments": [{"id": kept["id"]}]},
        files=[Attachment("1.png", PNG + b"1", "image/png")],
    )
    # then each call was multipart: payload_json listing files[n] by placeholder n, and the file
    one, two = fake.calls
    assert one.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert one.json == {
        "content": "1 of 2",
        "attachments": [{"id": 0, "description": "a cat", "filename": "0.png"}],
    }
    assert one.files == {"files[0]": ("0.png", PNG, "image/png")}
    assert two.json["attachments"] == [{"id": kept["id"]}, {"id": 0, "filename": "1.png"}]
    assert two.files == {"files[0]": ("1.png", PNG + b"1", "image/png")}
    # and the message shows both images
    assert kept["description"] == "a cat"
    assert [(a["filename"], a["size"]) for a in second["attachments"]] == [
        ("0.png", len(PNG)),
        ("1.png", len(PNG) + 1),
    ]


def test_a_channel_message_is_sent_with_the_bot_token(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # when a bot message replying to another is created
    reference = {"message_id": "1190000000000000099"}
    message = client.channel_message_create(
        bot_token=BOT, channel_id=CHANNEL, payload={"content": "hi", "message_reference": reference}
    )
    # then it was a POST to the channel with Authorization: Bot <token>
    [call] = fake.calls
    assert (call.method, call.path) == ("POST", f"/channels/{CHANNEL}/messages")
    assert call.headers["authorization"] == f"Bot {BOT}"
    assert call.json == {"content": "hi", "message_reference": reference}
    assert (message["channel_id"], message["message_reference"]) == (CHANNEL, reference)


def test_a_channel_message_is_deleted_with_the_bot_token(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # when a message is deleted
    client.channel_message_delete(bot_token=BOT, channel_id=CHANNEL, message_id="42")
    # then a DELETE with the bot's Authorization went out
    [call] = fake.calls
    assert (call.method, call.path, call.status) == (
        "DELETE",
        f"/channels/{CHANNEL}/messages/42",
        204,
    )
    assert call.headers["authorization"] == f"Bot {BOT}"


def test_commands_are_overwritten_in_bulk(client: DiscordClient, fake: FakeDiscord) -> None:
    # when the global commands are replaced
    commands = [{"name": "imagine", "description": "Generate an image", "type": 1}]
    registered = client.commands_overwrite(bot_token=BOT, application_id=APP, commands=commands)
    # then one PUT carried the list, and the commands came back with ids
    [call] = fake.calls
    assert (call.method, call.path, call.json) == ("PUT", f"/applications/{APP}/commands", commands)
    assert call.headers["authorization"] == f"Bot {BOT}"
    assert [(c["name"], c["application_id"]) for c in registered] == [("imagine", APP)]
    assert registered[0]["id"].isdigit()


def test_the_shared_client_is_one_per_process() -> None:
    assert discord_client() is discord_client()


# --- 429s and buckets ------------------------------------------------------------------------


def test_a_short_429_is_waited_out_and_the_call_sent_again(
    client: DiscordClient, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    # given Discord answers the next edit with a 429 for 0.2 s
    fake.fail_next("PATCH", ORIGINAL, 429, {"message": "rate", "retry_after": 0.2, "global": False})
    # when the original is edited
    with caplog.at_level(logging.DEBUG):
        message = client.interaction_original_edit(
            application_id=APP, token=TOKEN, payload={"content": "ok"}
        )
    # then it was sent again after at least retry_after, and succeeded
    first, second = fake.calls
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.2
    assert message["content"] == "ok"
    # and the log of the wait names no token
    assert "429" in caplog.text
    assert_no_secret(caplog.text)


def test_a_long_429_fails_retryable_with_its_wait_and_no_second_call(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # given a 429 longer than DISCORD_MAX_WAIT_S
    fake.fail_next("POST", MESSAGES, 429, {"message": "rate", "retry_after": 12.5, "global": False})
    # when a message is sent
    error = failing(send, client=client)
    # then it failed retryable, saying when, after one call
    assert (error.status, error.retryable, error.retry_after) == (429, True, 12.5)
    assert len(fake.calls) == 1


def test_a_429_without_retry_after_in_its_body_uses_the_header(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # given a 429 whose body has no retry_after
    fake.fail_next("PATCH", ORIGINAL, 429, {"message": "slow down"}, {"Retry-After": "30"})
    # when the original is edited, then the header's wait is the error's
    error = failing(edit_original, client=client)
    assert (error.retryable, error.retry_after) == (True, 30.0)


def test_429s_that_keep_coming_fail_after_a_couple_of_retries(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # given 429s of 0.05 s on every call
    body = {"message": "rate", "retry_after": 0.05, "global": False}
    fake.fail_next("PATCH", ORIGINAL, 429, body, times=10)
    # when the original is edited, then it fails retryable after three calls
    error = failing(client.interaction_original_edit, application_id=APP, token=TOKEN, payload={})
    assert (error.status, error.retryable, error.retry_after) == (429, True, 0.05)
    assert len(fake.calls) == 3


def test_a_global_429_blocks_the_bot_but_not_interaction_routes_nor_other_bots(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # given the bot hit the global limit for 20 s
    fake.fail_next("POST", MESSAGES, 429, {"message": "rate", "retry_after": 20, "global": True})
    error = failing(send, client=client)
    assert (error.retryable, error.retry_after) == (True, 20)
    # when the same bot calls again, on another channel
    blocked = failing(send, client=client, channel=OTHER_CHANNEL)
    # then it failed retryable without a call
    assert blocked.retryable
    assert blocked.retry_after is not None and 19 < blocked.retry_after <= 20
    assert len(fake.calls) == 1
    # and interaction-token routes and another bot still go through
    edit_original(client)
    send(client, bot=OTHER_BOT)
    assert [c.status for c in fake.calls] == [429, 200, 200]


def test_a_short_global_429_is_waited_out(client: DiscordClient, fake: FakeDiscord) -> None:
    # given a global 429 of 0.15 s
    fake.fail_next(
        "PUT", r".*/commands", 429, {"message": "r", "retry_after": 0.15, "global": True}
    )
    # when the commands are overwritten, then the call is sent again after the wait
    client.commands_overwrite(bot_token=BOT, application_id=APP, commands=[])
    first, second = fake.calls
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.15


def test_an_exhausted_bucket_is_waited_out_before_the_call(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # given a bucket of 2 messages per 0.4 s per channel
    fake.bucket_limit(2, 0.4, route="channel_message_create")
    # when three messages are sent to the channel
    for _ in range(3):
        send(client)
    # then the third waited for the bucket to reset instead of earning a 429
    assert [c.status for c in fake.calls] == [200, 200, 200]
    assert fake.calls[2].at - fake.calls[0].at >= 0.35


def test_an_exhausted_bucket_that_resets_late_fails_without_a_call(
    client: DiscordClient, fake: FakeDiscord, settings: Any
) -> None:
    # given a bucket of 1 edit per 5 s per interaction token, spent
    settings.DISCORD_MAX_WAIT_S = 0.1
    fake.bucket_limit(1, 5.0)
    client.interaction_original_edit(application_id=APP, token=TOKEN, payload={})
    # when the same token's original is edited again
    error = failing(client.interaction_original_edit, application_id=APP, token=TOKEN, payload={})
    # then it failed retryable with the bucket's reset, and was not sent
    assert (error.status, error.retryable) == (None, True)
    assert error.retry_after is not None and 4 < error.retry_after <= 5
    assert len(fake.calls) == 1
    # and another top-level resource (another token) has a bucket of its own
    client.interaction_original_edit(application_id=APP, token=OTHER_TOKEN, payload={})
    assert [c.status for c in fake.calls] == [200, 200]


def test_threads_share_the_bucket_without_earning_429s(
    client: DiscordClient, fake: FakeDiscord
) -> None:
    # given a bucket of 2 edits per 0.3 s per interaction token, learnt from a first call
    fake.bucket_limit(2, 0.3, route="original")
    edit_original(client)
    # when three threads edit the same token's original at once
    errors: list[Exception] = []

    def run() -> None:
        try:
            edit_original(client)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    # then all were sent, none got a 429
    assert errors == []
    assert [c.status for c in fake.calls] == [200] * 4


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retryable_and_not_retried_here(
    client: DiscordClient, fake: FakeDiscord, status: int
) -> None:
    # given Discord fails the next message
    fake.fail_next("POST", MESSAGES, status, {"message": "oops", "code": 0})
    # when it is sent, then it failed retryable, after one call (a POST may have landed)
    error = failing(send, client=client)
    assert (error.status, error.retryable, error.retry_after) == (status, True, None)
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"message": "Invalid Form Body", "code": 50035}),
        (403, {"message": "Missing Permissions", "code": 50013}),
        (404, {"message": "Unknown Channel", "code": 10003}),
    ],
)
def test_client_errors_are_final_and_carry_discords_code(
    client: DiscordClient, fake: FakeDiscord, status: int, body: dict[str, Any]
) -> None:
    fake.fail_next("POST", MESSAGES, status, body)
    error = failing(send, client=client)
    assert (error.status, error.code, error.retryable) == (status, body["code"], False)
    assert body["message"] in str(error)


def test_an_expired_interaction_token_is_final(client: DiscordClient, fake: FakeDiscord) -> None:
    # given the interaction token expired
    fake.expire_token(TOKEN)
    # when the original is edited, then it is Discord's 50027, not retryable, token redacted
    error = failing(client.interaction_original_edit, application_id=APP, token=TOKEN, payload={})
    assert (error.status, error.code, error.retryable) == (401, 50027, False)
    assert f"/webhooks/{APP}/***/messages/@original" in str(error)


def test_a_wrong_bot_token_is_final(client: DiscordClient) -> None:
    error = failing(send, client=client, bot="not-a-token-we-know")
    assert (error.status, error.retryable) == (401, False)
    assert "not-a-token-we-know" not in str(error)


def test_a_closed_port_is_retryable(settings: Any) -> None:
    # given nothing listens on the port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = DiscordClient(base_url=f"http://127.0.0.1:{port}/api/v10")
    # when the original is edited, then it failed retryable, with no status
    error = failing(edit_original, client=client)
    assert (error.status, error.retryable) == (None, True)


def test_a_timeout_is_retryable(client: DiscordClient, fake: FakeDiscord, settings: Any) -> None:
    # given Discord holds the next edit for longer than the read timeout
    settings.DISCORD_TIMEOUT_S = 0.2
    fake.stall_next("PATCH", ORIGINAL, 3.0)
    # when the original is edited
    started = time.monotonic()
    error = failing(client.interaction_original_edit, application_id=APP, token=TOKEN, payload={})
    # then it failed retryable after about the timeout
    assert (error.status, error.retryable) == (None, True)
    assert "timed out" in str(error)
    assert time.monotonic() - started < 2
