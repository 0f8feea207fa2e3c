"""The HTTP server in front of Django (gunicorn with sdsaas/gunicorn_conf.py): its limits, and its
own answers in the API's JSON error shape, over a real socket, in debug and production mode."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.fernet import Fernet
from django.conf import settings

from jobs.models import Job
from tenants.services import api_key_issue
from tests.support.api_server import api_server
from tests.support.factories import DiffusionModelFactory, TenantFactory

MODES = {
    "debug": {"SDSAAS_DEBUG": "1"},
    "production": {
        "SDSAAS_DEBUG": "0",
        "SDSAAS_SECRET_KEY": "test-only-secret",
        "SDSAAS_WEBHOOK_SECRET_KEYS": Fernet.generate_key().decode(),
        "SDSAAS_DISCORD_TOKEN_KEYS": Fernet.generate_key().decode(),
    },
}


@pytest.fixture(scope="module", params=list(MODES))
def base_url(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("gunicorn") / f"{request.param}.log"
    # No request here reaches the database: an unmigrated file stands in for it.
    database = f"sqlite:///{log.with_suffix('.sqlite3')}"
    with api_server(log, DATABASE_URL=database, **MODES[request.param]) as url:
        yield url


def exchange(base_url: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` as it is and read the answer up to the server's close."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    return int(status_line.split()[1]), headers, body


def request(target: str, *headers: str, method: str = "GET") -> bytes:
    # As the load balancer forwards it: production redirects a request that did not come by https.
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "X-Forwarded-Proto: https"]
    return "\r\n".join([*lines, *headers, "", ""]).encode("latin-1")


def assert_json_error(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got, headers, body = answer
    assert got == status, body
    assert headers["content-type"] == "application/json", headers
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)
    assert set(error) == {"error"}
    assert set(error["error"]) == {"code", "message", "details"}
    assert error["error"]["code"] == code
    assert error["error"]["message"]


OVER_THE_LIMITS = [
    # an Authorization header over 8190 bytes
    (
        request("/v1/models", "Authorization: Bearer " + "k" * 8200),
        431,
        "request_header_fields_too_large",
    ),
    # more than 50 headers
    (
        request("/v1/models", *(f"X-Extra-{n}: 1" for n in range(60))),
        431,
        "request_header_fields_too_large",
    ),
    # a request line over 4094 bytes
    (request("/v1/jobs?cursor=" + "c" * 4100), 414, "uri_too_long"),
    # no HTTP at all, and a header name with a space
    (b"HELLO\r\n\r\n", 400, "malformed_request"),
    (request("/v1/models", "Bad Header: 1"), 400, "malformed_request"),
]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    OVER_THE_LIMITS,
    ids=["long-header", "many-headers", "long-request-line", "not-http", "bad-header-name"],
)
def test_what_the_http_server_refuses_is_answered_in_the_json_error_shape(
    base_url: str, raw: bytes, status: int, code: str
) -> None:
    # when a request breaks the server's limits or is no HTTP request, sent over a socket
    answer = exchange(base_url, raw)
    # then the server answers it in the API's error shape, as JSON, with the fitting status
    assert_json_error(answer, status, code)


def test_requests_just_within_the_limits_reach_the_api(base_url: str) -> None:
    # given requests just within each limit: a long header, 45 headers, a long request line
    within = [
        request("/v1/models", "Authorization: Bearer " + "k" * 8100),
        request("/v1/models", *(f"X-Extra-{n}: 1" for n in range(45))),
        request("/v1/models?x=" + "x" * (4094 - len("GET /v1/models?x= HTTP/1.1"))),
    ]
    # when they are sent, then the API itself answers them: 401, as none has a valid key
    for raw in within:
        assert_json_error(exchange(base_url, raw), 401, "unauthenticated")


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/v1/jobs/job_x/nope", "/favicon.ico"])
def test_an_unknown_path_is_a_json_404_in_every_mode(base_url: str, method: str, path: str) -> None:
    # when an unknown path is requested with any method
    raw = request(path, "Content-Length: 0", method=method)
    # then it is the uniform 404, not Django's debug page listing the URL patterns
    assert_json_error(exchange(base_url, raw), 404, "not_found")


def chunked(body: bytes, size: int) -> bytes:
    """`body` as `Transfer-Encoding: chunked` sends it, in chunks of `size` bytes."""
    parts = [body[start : start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


@pytest.mark.django_db(transaction=True)
def test_a_chunked_request_body_is_read_whole_up_to_the_limit(served_api: str) -> None:
    # given a tenant with a key, and the model it asks for
    DiffusionModelFactory(slug="tiny")
    tenant = TenantFactory()
    _, key = api_key_issue(tenant=tenant)
    headers = [
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
    ]
    # when a job is submitted with its body in chunks, without a Content-Length
    body = json.dumps({"model": "tiny", "prompt": "a chunked fox", "steps": 3}).encode()
    status, _, answer = exchange(
        served_api, request("/v1/jobs", *headers, method="POST") + chunked(body, 7)
    )
    # then the job holds the whole body's input
    assert status == 202, answer
    job = Job.objects.get(public_id=json.loads(answer)["id"])
    assert (job.input["prompt"], job.input["steps"]) == ("a chunked fox", 3)
    # and a chunked body past the largest the API reads is refused in the error shape
    too_big = chunked(b" " * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1), 1 << 16)
    raw = request("/v1/jobs", *headers, method="POST") + too_big
    assert_json_error(exchange(served_api, raw), 413, "payload_too_large")
    assert Job.objects.count() == 1
