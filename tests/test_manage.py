"""manage.py and `make manage`: the README's administration commands, run as written."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tenants.models import Tenant
from tenants.services import api_key_authenticate
from tests.e2e.conftest import _database_url

ROOT = Path(__file__).resolve().parent.parent
# What a shell outside `make` has: neither debug nor a secret key.
BARE_ENV = {k: v for k, v in os.environ.items() if k not in {"SDSAAS_DEBUG", "SDSAAS_SECRET_KEY"}}


def readme_admin_commands() -> list[list[str]]:
    """The commands of the README's Administration section, split as a shell splits them."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Administration\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("argv", [["tenant_create", "acme"], ["help"]])
def test_manage_py_without_its_settings_names_the_missing_variable(argv: list[str]) -> None:
    # given a shell without SDSAAS_DEBUG or SDSAAS_SECRET_KEY
    # when a project command, or help, is run
    done = subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=BARE_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # then it stops with status 2 and one line naming the variable (no traceback, and no help
    # that silently leaves out the project's commands)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "SDSAAS_SECRET_KEY must be set" in done.stderr


@pytest.mark.django_db(transaction=True)
def test_the_readmes_administration_commands_work_as_written() -> None:
    # given the README's commands, `make manage` with ARGS
    commands = readme_admin_commands()
    assert [argv[:2] for argv in commands] == [["make", "manage"]] * 2
    outputs = []
    for argv in commands:
        # when each runs as make runs it (the recipe from `make -n`, so that a stale .venv
        # is not rebuilt under the running suite), from a shell without debug or secret key,
        # on this test's database
        # (--no-print-directory: under `make test` the nested make would add its own lines)
        recipe = subprocess.run(
            [*argv, "-n", "--no-print-directory"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[-1]
        done = subprocess.run(
            ["/bin/sh", "-c", recipe],
            cwd=ROOT,
            env={**BARE_ENV, "DATABASE_URL": _database_url()},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    # then the tenant exists on its plan, and the key printed (alone) is one of that tenant's,
    # with the scopes asked for
    tenant = Tenant.objects.get(name="acme")
    assert tenant.plan.name == "pro"
    key = api_key_authenticate(plaintext=outputs[1].strip())
    assert key is not None
    assert key.tenant == tenant
    assert sorted(key.scopes) == ["jobs:read", "jobs:write"]
