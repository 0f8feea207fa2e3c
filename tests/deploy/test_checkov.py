"""checkov's Terraform policies pass, offline; a failure is allowed only as an inline
`#checkov:skip=CKV_...:reason` next to its resource, with a reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.deploy.tfconfig import TF_DIR

CHECKOV = Path(sys.executable).with_name("checkov")
# No network: no policy download, no guideline lookup, no module download, no fix suggestions.
OFFLINE = [
    "--quiet",
    "--compact",
    "--framework",
    "terraform",
    "--skip-policy-download",
    "--skip-fixes",
    "--no-guide",
    "--download-external-modules",
    "false",
    "-o",
    "json",
]


def checkov(directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        [str(CHECKOV), "-d", str(directory), *OFFLINE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def test_no_check_fails_and_every_skip_has_a_reason() -> None:
    report = checkov(TF_DIR)
    assert report["summary"]["parsing_errors"] == 0
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    skipped = report["results"].get("skipped_checks", [])
    unexplained = [
        (c["check_id"], c["resource"])
        for c in skipped
        if len(c["check_result"].get("suppress_comment", "").strip()) < 20
    ]
    assert unexplained == []


def test_a_removed_skip_comes_back_as_a_failure(tmp_path: Path) -> None:
    # given the stack with the data bucket's skip of "not replicated" taken out
    for path in TF_DIR.glob("*.tf"):
        shutil.copy(path, tmp_path)
    storage = tmp_path / "storage.tf"
    lines = storage.read_text().splitlines(keepends=True)
    storage.write_text("".join(line for line in lines if "skip=CKV_AWS_144:Outputs" not in line))
    # then checkov fails that check on that bucket
    failed = [(c["check_id"], c["resource"]) for c in checkov(tmp_path)["results"]["failed_checks"]]
    assert failed == [("CKV_AWS_144", "aws_s3_bucket.data")]
