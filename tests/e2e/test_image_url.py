"""img2img from an https URL: the control worker fetches it into S3, refusing private addresses.

The control worker of the session allows exactly one host, `localhost`, with the tests' own CA
(tests/e2e/conftest.py); every other way to loopback must be refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from jobs.models import Job
from tests.e2e.conftest import finished
from tests.support.https import HttpsServer, QuietHandler, Tls, serve_https
from tests.support.images import image_bytes

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("e2e_prefix", "model"),
]


CAT = image_bytes("PNG", (48, 40), (240, 200, 10))


class ImageHost(QuietHandler):
    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        port = self.server.port
        targets = {
            "/to-metadata": "https://169.254.169.254/latest/meta-data/iam/",
            "/to-loopback": f"https://127.0.0.1:{port}/cat.png",
            "/to-cat": "/cat.png",
        }
        if self.path == "/cat.png":
            self.reply(200, CAT, "image/png")
        elif self.path in targets:
            self.redirect(302, targets[self.path])
        else:
            self.send_error(404)


@pytest.fixture
def image_host(tls: Tls) -> Iterator[HttpsServer]:
    with serve_https(ImageHost, tls) as httpd:
        yield httpd


def submit(client: Any, url: str) -> str:
    body = {"model": "tiny", "prompt": "in ink", "image": url, "strength": 0.6, "steps": 4}
    response = client.post("/v1/jobs", {**body, "width": 64, "height": 64}, format="json")
    assert response.status_code == 202, response.content
    return str(response.json()["id"])


def test_an_allowed_host_is_fetched_into_s3_and_the_job_succeeds(client, image_host, workers):  # type: ignore[no-untyped-def]
    # when a job names an image on the one host the control worker may reach on loopback
    job_id = submit(client, f"https://localhost:{image_host.port}/to-cat")
    # then the control worker fetched it (following a same-host redirect) and the job succeeded
    job = finished(client, job_id)
    assert job["status"] == "succeeded", workers.log("control")
    assert image_host.paths == ["/to-cat", "/cat.png"]
    stored = Job.objects.get(public_id=job_id).init_image_key
    assert stored.endswith(f"/jobs/{job_id}/input.png")


# (Loopback written as 127.1 or 2130706433 is refused at submit already, with a 400:
# tests/jobs/test_validation_img2img.py.)
@pytest.mark.parametrize(
    ("path", "host"),
    [
        pytest.param("/to-metadata", "localhost", id="redirect-to-metadata"),
        pytest.param("/to-loopback", "localhost", id="redirect-to-loopback-ip"),
    ],
)
def test_private_addresses_are_refused_and_the_job_fails(  # type: ignore[no-untyped-def]
    client, image_host, path, host
):
    # when a job names an image that is, or leads to, a private address
    job_id = submit(client, f"https://{host}:{image_host.port}{path}")
    # then it fails before any GPU sees it, saying why, and its credit is released
    job = finished(client, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "image_fetch_failed"
    assert "address" in job["error"]["message"]
    assert job["attempt"] == 1
    assert Job.objects.get(public_id=job_id).init_image_key == ""
    # and the image itself was never served
    assert "/cat.png" not in image_host.paths
