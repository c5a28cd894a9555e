"""The suite on a machine without Debian's prometheus package: tests that need it skip with the install
command as the reason, and under CI (``CI`` set) the same tests fail instead of skipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import ROOT

# test_alerts needs only promtool and no database: quick to run in a child pytest.
TARGET = "tests/e2e/test_alerts.py::test_rules_pass_promtool_check"


def run_without_prometheus(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PATH=str(tmp_path), **extra)  # a PATH with no promtool or prometheus on it
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", TARGET],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_missing_promtool_skips_with_the_install_command(tmp_path: Path) -> None:
    proc = run_without_prometheus(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout, proc.stdout
    assert "needs promtool on PATH: apt-get install prometheus" in proc.stdout, proc.stdout


def test_missing_promtool_fails_under_ci(tmp_path: Path) -> None:
    proc = run_without_prometheus(tmp_path, CI="true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout
    assert "needs promtool on PATH: apt-get install prometheus (CI is set" in proc.stdout, proc.stdout
