"""The alert rules pass `promtool check rules` and fire in `promtool test rules` on the series that
should raise them; rules and dashboard name only series the code exports."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "pneumo-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "pneumo-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "pneumo-dashboard.json"
EXPORTERS = [REPO / "pneumo" / "serve" / "prometheus.py", REPO / "pneumo" / "serve" / "monitor.py"]


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is missing: `apt-get install -y prometheus` (Debian) provides it; .ci/run installs it")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent)


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout + result.stderr


def test_alerts_fire_on_the_series_that_should_raise_them():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def exported_series() -> set[str]:
    """Names the code registers with Ray (which adds ray_ and, for counters, _total)."""
    names = set()
    for path in EXPORTERS:
        for kind, name in re.findall(r"metrics\.(Counter|Gauge|Histogram)\(\s*\"(\w+)\"", path.read_text()):
            names |= (
                {f"ray_{name}_total"}
                if kind == "Counter"
                else {f"ray_{name}_{suffix}" for suffix in ("bucket", "sum", "count")}
                if kind == "Histogram"
                else {f"ray_{name}"}
            )
    return names


def test_rules_and_dashboard_use_only_exported_series():
    exported = exported_series()
    assert {"ray_pneumo_drift_detected", "ray_pneumo_ood_rate", "ray_pneumo_ood_inputs_total"} <= exported
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = set(re.findall(r"ray_pneumo_\w+", RULES.read_text() + " ".join(expressions)))
    assert used and used <= exported, used - exported
