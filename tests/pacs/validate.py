"""The standard's own tools on the SRs the tests write: dciodvfy (dicom3tools) and dsrdump (DCMTK);
a test that needs one skips, saying how to install it, where it is missing."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY, DSRDUMP = shutil.which("dciodvfy"), shutil.which("dsrdump")
# Warnings dciodvfy may give on these SRs, and why each is the source film's, not the SR's:
EXPLAINED_WARNINGS = (
    # RG1's own Referring Physician's Name is "ward", a name without the ^ separators of the current
    # PN form; the SR copies it as the patient/study modules require
    r"Value dubious for this VR - \(0x0008,0x0090\) PN Referring Physician's Name .*Retired Person Name form",
    # a film without Study Date/Time/ID gives an SR with them empty (Type 2: present, may be empty);
    # only a DICOMDIR, which pneumo does not write, would need a value
    r"Missing attribute or value that would be needed to build DICOMDIR - Study (Date|Time|ID)",
)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) dciodvfy reports for a file."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy validates the SRs: apt-get install -y dicom3tools (.ci/run installs it)")
    output = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (output.stdout + output.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


def dsrdump(path: Path) -> str:
    if DSRDUMP is None:
        pytest.skip("dsrdump renders the SRs: apt-get install -y dcmtk (.ci/run installs it)")
    output = subprocess.run([DSRDUMP, str(path)], capture_output=True, text=True, timeout=60)
    assert output.returncode == 0, output.stderr
    return output.stdout


def unexplained_warnings(warnings: list[str]) -> list[str]:
    return [line for line in warnings if not any(re.search(known, line) for known in EXPLAINED_WARNINGS)]
