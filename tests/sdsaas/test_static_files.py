"""The admin as deployed: DEBUG off, its CSS and scripts collected into STATIC_ROOT (as
deploy/docker/web.Dockerfile does at build) and served by the API's own process (WhiteNoise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client

ASSET = "admin/css/base.css"


def test_the_admin_s_static_files_are_served_by_the_api_with_debug_off(
    settings: Any, tmp_path: Path
) -> None:
    # given the static files collected as the web image collects them, and debug off
    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path
    call_command("collectstatic", interactive=False, verbosity=0)
    client = Client()  # its handler, and the middleware, start with these settings
    # when the admin's stylesheet is asked for, then it is served as it is in Django
    answer = client.get(f"/static/{ASSET}")
    assert answer.status_code == 200, answer
    assert answer["Content-Type"].startswith("text/css")
    source = finders.find(ASSET)
    assert isinstance(source, str)
    assert b"".join(answer.streaming_content) == Path(source).read_bytes()
    # and compressed to a client that takes it
    compressed = client.get(f"/static/{ASSET}", HTTP_ACCEPT_ENCODING="gzip")
    assert compressed["Content-Encoding"] == "gzip"
    # and a file that is not there is a 404, not an error
    assert client.get("/static/admin/css/no-such.css").status_code == 404
