"""The alerting rules are valid, and the stuck-run alert fires on a synthetic series (promtool)."""

from __future__ import annotations

import subprocess

from tests.helpers.paths import ROOT
from tests.pg.test_exposition import promtool


def test_rules_pass_promtool_check() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(ROOT / "deploy/prometheus/agno-alerts.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stuck_run_alert_fires() -> None:
    proc = subprocess.run([promtool(), "test", "rules", str(ROOT / "tests/alerts_test.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
