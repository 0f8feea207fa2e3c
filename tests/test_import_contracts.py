"""The import contracts that `make test` checks with `lint-imports` are there, and they can fail.

pyproject.toml's [tool.importlinter] holds the boundaries of DESIGN.md's rules (web code never
imports torch, the GPU worker never imports the web app, ...). `make test` runs `lint-imports`
against the project itself; these tests check that each contract names what it must, and run the
project's own configuration against a small fixture tree with the same package names (`django`
included, as a stand-in), once with one forbidden import per contract (every contract is
reported broken, naming the import) and once without (every contract is kept).

`lint-imports` runs in a subprocess with the fixture as its working directory: it puts that first
on sys.path, so the fixture's packages are the ones it reads (in this process `django` and
`sdsaas` are imported already, and the import system would answer with them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# id: (source modules, modules that must be among the forbidden ones)
CONTRACTS = {
    "web-no-gpu": (
        {"sdsaas", "jobs", "tenants", "integrations"},
        {"torch", "diffusers", "transformers", "accelerate", "peft", "gpu_worker"},
    ),
    "gpu-no-web": (
        {"gpu_worker"},
        {
            "jobs",
            "tenants",
            "integrations",
            "rest_framework",
            "drf_spectacular",
            "django.contrib.admin",
            "sdsaas.urls",
            "sdsaas.api",
            "sdsaas.celery",
        },
    ),
    "tenants-no-jobs": ({"tenants"}, {"jobs"}),
    "integrations-no-job-services": ({"integrations"}, {"jobs.services"}),
    "contract-django-free": (
        {"sdsaas.contract"},
        {"django", "rest_framework", "celery", "kombu", "boto3", "jobs", "tenants", "gpu_worker"},
    ),
}

# The fixture: module -> its source. Allowed imports only, each of the kind the project has.
CLEAN = {
    "django": "",
    "django.conf": "",
    "django.contrib": "",
    "django.contrib.admin": "from django.conf import settings\n",
    "sdsaas": "",
    "sdsaas.settings": "from django.conf import settings\n",
    "sdsaas.contract": "import dataclasses\nfrom PIL import Image\n",
    "sdsaas.broker": "",
    "sdsaas.broker.sqs": "import boto3\nfrom django.conf import settings\n",
    "sdsaas.urls": "from django.contrib import admin\nimport jobs.apis\n",
    "sdsaas.api": "import rest_framework\n",
    "sdsaas.celery": "import celery\n",
    "sdsaas.wsgi": "",
    "jobs": "",
    "jobs.apis": "import rest_framework\nfrom jobs.services import submit\n",
    "jobs.announcements": "",
    "jobs.selectors": "",
    "jobs.services": "",
    "jobs.services.submit": "import sdsaas.broker.sqs\n",
    "tenants": "",
    "tenants.selectors": "from django.conf import settings\n",
    "integrations": "",
    "integrations.webhooks": "from jobs import announcements, selectors\n",
    "integrations.discord": "",
    "integrations.discord.services": "",
    # The contract's one ignored import: Discord submits jobs as the REST API does.
    "integrations.discord.services.imagine": "from jobs.services.submit import job_submit\n",
    "gpu_worker": "",
    "gpu_worker.tasks": (
        "import torch\nfrom django.conf import settings\nfrom sdsaas import contract\n"
        "from sdsaas.broker import sqs\n"
    ),
}
# One forbidden import per contract: (module, the line added to it, the chain reported).
VIOLATIONS = {
    "web-no-gpu": ("jobs.selectors", "import torch", "jobs.selectors -> torch"),
    "gpu-no-web": (
        "gpu_worker.tasks",
        "from django.contrib import admin",
        "gpu_worker.tasks -> django.contrib.admin",
    ),
    "tenants-no-jobs": (
        "tenants.selectors",
        "from jobs.selectors import *",
        "tenants.selectors -> jobs.selectors",
    ),
    "integrations-no-job-services": (
        "integrations.webhooks",
        "import jobs.services.submit",
        "integrations.webhooks -> jobs.services.submit",
    ),
    "contract-django-free": (
        "sdsaas.contract",
        "from django.conf import settings",
        "sdsaas.contract -> django.conf",
    ),
}


def _config() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _contracts() -> dict[str, dict[str, Any]]:
    return {contract["id"]: contract for contract in _config()["contracts"]}


def test_the_project_configures_the_contracts_of_the_design() -> None:
    config = _config()
    assert {"sdsaas", "jobs", "tenants", "integrations", "gpu_worker"} <= set(
        config["root_packages"]
    )
    # Third-party packages (torch, DRF, celery...) are in the graph, so they can be forbidden
    assert config["include_external_packages"] is True
    contracts = _contracts()
    assert set(CONTRACTS) <= set(contracts)
    for contract_id, (sources, forbidden) in CONTRACTS.items():
        contract = contracts[contract_id]
        assert contract["type"] == "forbidden", contract_id
        assert set(contract["source_modules"]) == sources, contract_id
        assert forbidden <= set(contract["forbidden_modules"]), contract_id
        # Indirect imports count: a forbidden module reached through an allowed one is a breach
        assert not contract.get("allow_indirect_imports", False), contract_id


def test_make_test_runs_lint_imports_before_pytest() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "lint-imports" in recipe
    assert recipe.index("lint-imports") < recipe.index("pytest")


def _lint_fixture(root: Path, *, violations: bool) -> subprocess.CompletedProcess[str]:
    sources = dict(CLEAN)
    if violations:
        for module, line, _ in VIOLATIONS.values():
            sources[module] += f"{line}\n"
    for module, source in sources.items():
        parts = module.split(".")
        if any(other.startswith(f"{module}.") for other in sources):
            path = root.joinpath(*parts, "__init__.py")
        else:
            path = root.joinpath(*parts[:-1], f"{parts[-1]}.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    # The project's configuration, as it is
    (root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=root,
        # Wide enough that no contract's name is wrapped
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """The fixture tree with one forbidden import per contract, linted once for all tests."""
    return _lint_fixture(tmp_path_factory.mktemp("broken"), violations=True)


def test_every_contract_is_kept_by_a_tree_that_keeps_to_them(tmp_path: Path) -> None:
    result = _lint_fixture(tmp_path, violations=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in result.stdout


@pytest.mark.parametrize("contract_id", sorted(VIOLATIONS))
def test_a_forbidden_import_breaks_its_contract(
    broken: subprocess.CompletedProcess[str], contract_id: str
) -> None:
    # Given the fixture tree with this contract's forbidden import (and the others')
    output = broken.stdout + broken.stderr
    # Then lint-imports fails, every contract broken, this one naming the import
    assert broken.returncode == 1, output
    assert f"Contracts: 0 kept, {len(_contracts())} broken." in broken.stdout, output
    report = broken.stdout.split("Broken contracts", 1)[1]
    headings = {c: report.find(f"\n{contract['name']}\n") for c, contract in _contracts().items()}
    start = headings[contract_id]
    assert start >= 0, output
    end = min([i for i in headings.values() if i > start] or [len(report)])
    assert VIOLATIONS[contract_id][2] in report[start:end], output
