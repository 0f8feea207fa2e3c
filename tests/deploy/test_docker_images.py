"""The images' Dockerfiles (deploy/docker/), read as text: no Docker daemon runs here. Each is
multi-stage and ends as a user of its own; each installs from the lock by hash; the web image
holds no torch and no GPU code; the GPU image's one install outside the lock is torch's CUDA
build, of the version the lock pins; nothing of var/ (weights, data) goes in."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
IMAGES = ("web", "gpu")


def dockerfile(image: str) -> str:
    return (DOCKER / f"{image}.Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def final_stage(text: str) -> list[tuple[str, str]]:
    steps = instructions(text)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_is_multi_stage_and_runs_as_a_user_of_its_own(image: str) -> None:
    steps = instructions(dockerfile(image))
    assert sum(1 for word, _ in steps if word == "FROM") >= 2
    users = [args for word, args in final_stage(dockerfile(image)) if word == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}, users


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_installs_its_profile_of_the_lock_by_hash_and_no_data(image: str) -> None:
    text = dockerfile(image)
    runs = " ".join(args for word, args in instructions(text) if word == "RUN")
    assert f"requirements/{image}.txt" in text
    assert "--require-hashes" in runs and "--no-deps" in runs
    copies = [args for word, args in instructions(text) if word == "COPY"]
    assert not any(re.search(r"\bvar\b|\.safetensors|\.ckpt|models/", c) for c in copies), copies


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_builds_the_project_with_the_lock_s_setuptools(image: str) -> None:
    # (installed without build isolation: the base image's own may be too old to build a wheel)
    assert "--no-build-isolation" in dockerfile(image)
    lock = (ROOT / "requirements" / f"{image}.txt").read_text()
    assert re.search(r"^setuptools==\S+ \\\n +--hash=sha256:", lock, re.M)


def test_the_web_image_has_no_torch_and_no_gpu_code() -> None:
    text = dockerfile("web")
    assert not re.search(r"torch|diffusers|gpu\.txt|dev\.txt", text.split("FROM", 1)[1])
    copies = [args for word, args in instructions(text) if word == "COPY"]
    assert not any("gpu_worker" in c for c in copies), copies


def test_the_gpu_image_has_no_web_app_and_torch_s_cuda_build_of_the_locked_version() -> None:
    text = dockerfile("gpu")
    copies = [args for word, args in instructions(text) if word == "COPY"]
    for package in ("jobs", "tenants", "integrations", "manage.py"):
        assert not any(re.search(rf"\b{package}\b", c) for c in copies), (package, copies)
    locked = re.search(
        r"^torch==([\d.]+)\+cpu", (ROOT / "requirements" / "gpu.txt").read_text(), re.M
    )
    assert locked, "the lock pins no torch"
    [version] = re.findall(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)
    assert version == locked.group(1), "the GPU image's torch is not the version of the lock"


def test_the_gpu_image_s_filter_drops_exactly_the_locked_torch_entry(tmp_path: Path) -> None:
    # The Dockerfile's awk program, run on the real lock: torch's entry (its hashes and its
    # "# via" lines) goes, every other line stays.
    [program] = re.findall(r"RUN awk '([^']+)'", dockerfile("gpu"))
    lock = (ROOT / "requirements" / "gpu.txt").read_text()
    done = subprocess.run(["awk", program], input=lock, capture_output=True, text=True, check=True)
    kept = done.stdout
    assert "torch==" not in kept
    dropped = [line for line in lock.splitlines() if line not in kept.splitlines()]
    assert dropped[0].startswith("torch==") and all(line.startswith(" ") for line in dropped[1:])
    assert (
        sum(1 for line in kept.splitlines() if "==" in line and not line.startswith(" "))
        == sum(1 for line in lock.splitlines() if "==" in line and not line.startswith(" ")) - 1
    )


def test_the_build_context_leaves_out_the_virtualenv_local_data_and_git() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)
