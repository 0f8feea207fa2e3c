"""The environment holds exactly what the lock names, and the lock is current with pyproject.

`make test` builds .venv from requirements/dev.txt alone (pinned, hashed, --no-deps), so a release
published upstream after the lock was written cannot change what a fresh clone installs. These
tests fail when that stops being true: a package installed that the lock does not name, a version
that differs, a profile that disagrees with another, or a pyproject range the lock no longer meets.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements"
# The venv's own installer, and the project itself (installed editable from the tree).
NOT_LOCKED = {"pip", "sdsaas"}


def _pins(profile: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (LOCK / f"{profile}.txt").read_text().splitlines():
        if not line or line[0] in " #-":
            continue
        requirement = Requirement(line.split(" ")[0])
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", line
        pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def _pyproject_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def test_installed_set_is_exactly_the_lock() -> None:
    installed = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in metadata.distributions()
    }
    for name in NOT_LOCKED:
        installed.pop(name, None)
    locked = _pins("dev")
    assert {n: str(v) for n, v in installed.items() if locked.get(n) != v} == {}, (
        "installed but not in requirements/dev.txt, or at another version"
    )
    assert sorted(set(locked) - set(installed)) == [], "locked but not installed"


def test_every_profile_pins_the_same_versions_as_dev() -> None:
    dev = _pins("dev")
    for profile in ("web", "gpu"):
        differing = {n: str(v) for n, v in _pins(profile).items() if dev.get(n) != v}
        assert differing == {}, f"requirements/{profile}.txt disagrees with dev.txt"


def test_web_profile_carries_no_torch_or_diffusers() -> None:
    web = _pins("web")
    assert not {"torch", "diffusers", "transformers"} & set(web)
    assert {"django", "celery", "kombu", "gunicorn"} <= set(web)


def test_gpu_profile_carries_no_web_packages() -> None:
    """GPU workers never boot the web app: the GPU image ships neither DRF nor gunicorn."""
    gpu = _pins("gpu")
    web_only = {
        "djangorestframework",
        "drf-spectacular",
        "drf-spectacular-sidecar",
        "gunicorn",
        "psycopg",
        "psycopg-binary",
    }
    assert sorted(web_only & set(gpu)) == []
    # What a GPU worker does use: settings, Celery over SQS, the storage backend, the model stack
    assert {"django", "dj-database-url", "celery", "kombu", "boto3", "django-storages"} <= set(gpu)
    assert {"torch", "diffusers", "transformers"} <= set(gpu)


def test_lock_meets_every_range_in_pyproject() -> None:
    """A pyproject edit without `make lock` leaves a lock that no longer meets it."""
    # As `make lock` compiles them: each profile is the base dependencies and its extras.
    profiles = (("web", ("web",)), ("gpu", ("gpu",)), ("dev", ("web", "gpu", "dev")))
    for profile, extras in profiles:
        pins = _pins(profile)
        for requirement in _pyproject_requirements(*extras):
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement} is not in requirements/{profile}.txt"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"requirements/{profile}.txt pins {name}=={pins[name]}, outside {requirement}"
            )
            for extra in requirement.extras:
                assert _extra_is_locked(name, extra, pins), f"{requirement}: {extra} not locked"


def _extra_is_locked(name: str, extra: str, pins: dict[str, Version]) -> bool:
    needs = [
        Requirement(line) for line in metadata.requires(name) or [] if f'extra == "{extra}"' in line
    ]
    return all(canonicalize_name(r.name) in pins for r in needs)


def test_every_pin_carries_a_hash() -> None:
    for profile in ("web", "gpu", "dev"):
        text = (LOCK / f"{profile}.txt").read_text()
        blocks = [b for b in text.split("\n") if b and b[0] not in " #"]
        assert blocks, profile
        for line in blocks:
            assert line.endswith("\\"), f"{profile}.txt: {line} has no --hash"
