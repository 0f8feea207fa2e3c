from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, download, finished
from tests.support.factories import (
    LoraFactory,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("e2e_prefix")]


def build_lora_file(out: Path) -> str:
    """The operator's way: the builder's CLI writes the file and prints the catalog digest."""
    built = subprocess.run(
        [sys.executable, "-m", "gpu_worker.build_model", "--arch", "tiny", "--lora", str(out)],
        check=True,
        capture_output=True,
        cwd=ROOT,
        text=True,
    )
    return built.stdout.split()[-1]


def test_lora_job_succeeds_and_its_record_names_the_lora(  # type: ignore[no-untyped-def]
    workers, model, client, tmp_path
):
    # given the tiny model, and a LoRA for it in the catalog: a local file with its digest
    lora_file = tmp_path / "e2e-style.safetensors"
    LoraFactory(
        slug="e2e-style",
        family=model.family,
        source_uri=str(lora_file),
        sha256=build_lora_file(lora_file),
    )
    body = {"model": "tiny", "prompt": "a fox", "width": 64, "height": 64, "steps": 3, "seed": 99}

    # when the same input is submitted with the LoRA at 0.8 and without it
    with_lora = client.post(
        "/v1/jobs", {**body, "loras": [{"slug": "e2e-style", "weight": 0.8}]}, format="json"
    ).json()
    without = client.post("/v1/jobs", body, format="json").json()
    jobs = [finished(client, with_lora["id"]), finished(client, without["id"])]

    # then both succeed, and the job and its image's embedded record name the LoRA and weight
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], workers.log("gpu")
    assert jobs[0]["input"]["loras"] == [{"slug": "e2e-style", "weight": 0.8}]
    images = [download(job["output"][0]) for job in jobs]
    record = json.loads(images[0].text["sdsaas"])
    assert record["loras"] == [{"slug": "e2e-style", "weight": 0.8}]
    assert json.loads(images[1].text["sdsaas"])["loras"] == []
    # and the LoRA changed the pixels
    assert images[0].tobytes() != images[1].tobytes()
