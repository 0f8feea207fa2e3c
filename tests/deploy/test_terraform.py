"""The Terraform defaults obey the same visibility rule as the services' settings."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from sdsaas import settings as sdsaas_settings
from sdsaas.settings import check_visibility_timing
from tests.deploy import tfconfig

# Terraform variable -> keyword of check_visibility_timing.
TIMINGS = {
    "visibility_timeout_seconds": "visibility_s",
    "gpu_heartbeat_seconds": "heartbeat_s",
    "gpu_outage_tolerance_seconds": "outage_tolerance_s",
    "gpu_job_time_limit_seconds": "job_time_limit_s",
}


def check_timings(stack: tfconfig.Stack) -> None:
    defaults = {
        name: stack.variables[name].get("default")
        for name in TIMINGS
        if isinstance(stack.variables.get(name, {}).get("default"), int)
    }
    missing = set(TIMINGS) - set(defaults)
    assert not missing, f"no integer default for {sorted(missing)} in {tfconfig.TF_DIR}"
    check_visibility_timing(**{keyword: defaults[name] for name, keyword in TIMINGS.items()})


def test_the_terraform_timing_defaults_obey_the_settings_rule() -> None:
    check_timings(tfconfig.load())


def test_a_terraform_tolerance_the_heartbeat_cannot_cover_is_caught() -> None:
    # given the Terraform with an outage tolerance longer than the queues' base timeout allows
    stack = tfconfig.load()
    stack.variables["gpu_outage_tolerance_seconds"]["default"] = 300
    # then the check refuses it, naming both settings
    with pytest.raises(ImproperlyConfigured, match=r"OUTAGE_TOLERANCE_S \(300\).*TIMEOUT \(60\)"):
        check_timings(stack)


# Terraform variable -> the control plane's setting it is given as, and that setting's default.
SCALING = {
    "scaling_acceptable_wait_seconds": "SCALING_ACCEPTABLE_WAIT_S",
    "scaling_scale_in_delay_seconds": "SCALING_SCALE_IN_DELAY_S",
    "scaling_keep_alive_seconds": "SCALING_KEEP_ALIVE_S",
}


@pytest.mark.parametrize(("variable", "setting"), list(SCALING.items()))
def test_the_scaling_knobs_reach_the_control_plane_with_the_settings_defaults(
    variable: str, setting: str
) -> None:
    stack = tfconfig.load()
    assert stack.variables[variable].get("default") == getattr(sdsaas_settings, setting)
    wiring = f"'SDSAAS_{setting}': '${{tostring(var.{variable})}}'"
    assert wiring in str(stack.locals["control_plane_env"]), wiring
