"""gpu_worker.model_store's digest and command line (push) against moto_server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from gpu_worker.model_store import ModelStore, digest
from tests.support.aws import LocalAws
from tests.support.model_store import read_folder, write_folder

ROOT = Path(__file__).resolve().parents[2]


# --- the digest --------------------------------------------------------------------------------


def test_digest_of_a_file_is_its_sha256_and_of_a_folder_the_hash_of_sorted_lines(
    tmp_path: Path,
) -> None:
    # given a folder with nested files
    files = write_folder(tmp_path / "m")

    # when both digests are computed
    folder_value = digest(tmp_path / "m")
    file_value = digest(tmp_path / "m" / "unet" / "config.json")

    # then they follow the documented definition
    lines = "".join(f"{rel}\t{hashlib.sha256(files[rel]).hexdigest()}\n" for rel in sorted(files))
    assert folder_value == hashlib.sha256(lines.encode()).hexdigest()
    assert file_value == hashlib.sha256(b"{}").hexdigest()


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_pushes_and_prints_what_the_catalog_needs_without_django(
    tmp_path: Path, local_aws: LocalAws, store: ModelStore, dest: str
) -> None:
    # given a folder, and an environment like an operator's: endpoint and credentials, no Django
    files = write_folder(tmp_path / "src")
    env = {
        **os.environ,
        "SDSAAS_S3_ENDPOINT_URL": local_aws.endpoint_url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    cli = [sys.executable, "-m", "gpu_worker.model_store"]

    # when it is pushed and digested from the command line, and pushed again to the same place
    pushed = subprocess.run(
        [*cli, "push", str(tmp_path / "src"), dest], env=env, cwd=ROOT, capture_output=True
    )
    digested = subprocess.run(
        [*cli, "digest", str(tmp_path / "src")], env=env, cwd=ROOT, capture_output=True
    )
    again = subprocess.run(
        [*cli, "push", str(tmp_path / "src"), dest], env=env, cwd=ROOT, capture_output=True
    )
    no_django = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, gpu_worker.model_store; "
            "sys.exit(any(m.split('.')[0] == 'django' for m in sys.modules))",
        ],
        env=env,
        cwd=ROOT,
    )

    # then the printed source and hash fetch the same files, and a second push is refused
    assert pushed.returncode == 0, pushed.stderr
    printed = dict(line.split("=", 1) for line in pushed.stdout.decode().splitlines())
    assert printed["source_uri"] == dest
    assert printed["sha256"] == digested.stdout.decode().strip() == digest(tmp_path / "src")
    assert read_folder(store.local_path(printed["source_uri"], printed["sha256"])) == files
    assert again.returncode == 1 and b"not empty" in again.stderr
    assert no_django.returncode == 0
