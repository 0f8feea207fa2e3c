"""The Terraform defaults obey the same visibility rule as the services' settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from sdsaas.settings import check_visibility_timing

MAIN_TF = Path(__file__).resolve().parents[2] / "deploy" / "terraform" / "main.tf"
# Terraform variable -> keyword of check_visibility_timing.
TIMINGS = {
    "visibility_timeout_seconds": "visibility_s",
    "gpu_heartbeat_seconds": "heartbeat_s",
    "gpu_outage_tolerance_seconds": "outage_tolerance_s",
    "gpu_job_time_limit_seconds": "job_time_limit_s",
}


def number_defaults(tf: str) -> dict[str, int]:
    """`default = <integer>` of each `variable "<name>" { ... }` block (they hold no nested `}`)."""
    defaults = {}
    for name, body in re.findall(r'variable\s+"(\w+)"\s*\{(.*?)\n\}', tf, re.DOTALL):
        match = re.search(r"^\s*default\s*=\s*(\d+)\s*$", body, re.MULTILINE)
        if match:
            defaults[name] = int(match.group(1))
    return defaults


def check_timings(tf: str) -> None:
    defaults = number_defaults(tf)
    missing = set(TIMINGS) - set(defaults)
    assert not missing, f"no integer default for {sorted(missing)} in {MAIN_TF}"
    check_visibility_timing(**{keyword: defaults[name] for name, keyword in TIMINGS.items()})


def test_the_terraform_timing_defaults_obey_the_settings_rule() -> None:
    check_timings(MAIN_TF.read_text())


def test_a_terraform_tolerance_the_heartbeat_cannot_cover_is_caught() -> None:
    # given the Terraform with an outage tolerance longer than the queues' base timeout allows
    tf = re.sub(
        r'(variable "gpu_outage_tolerance_seconds" \{.*?default\s*=\s*)\d+',
        r"\g<1>300",
        MAIN_TF.read_text(),
        flags=re.DOTALL,
    )
    # then the check refuses it, naming both settings
    with pytest.raises(ImproperlyConfigured, match=r"OUTAGE_TOLERANCE_S \(300\).*TIMEOUT \(60\)"):
        check_timings(tf)
