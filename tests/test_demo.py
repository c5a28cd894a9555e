"""`agno-exporter demo` as a user runs it: a subprocess, no database URL, no API key, no network.

Within 30 s of start /metrics must show tokens, run durations and TTFT; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from scrape import Samples
from support import exporter_cmd, free_port

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 30.0


def scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return Samples(r.read().decode())
    except OSError:
        return None


@pytest.mark.slow
def test_demo_shows_metrics_within_30s_and_stops_on_sigterm() -> None:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="aedemo-")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "DATABASE_URL") and not k.startswith("AGNO_EXPORTER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    proc = subprocess.Popen(
        [*exporter_cmd(), "demo", "--duration", "40", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        s = None
        while time.monotonic() - started < DEADLINE:
            assert proc.poll() is None, proc.communicate()
            s = scrape(port)
            if s is not None and all(s.sum(m) > 0 for m in (
                    "agno_tokens_total", "agno_run_duration_seconds_count",
                    "agno_run_time_to_first_token_seconds_count")):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no tokens, durations and TTFT on /metrics within {DEADLINE:g}s")
        assert s is not None
        assert s.sum("agno_exporter_scheduled_runs_fired_total") > 0  # the scheduler's own metrics
        print(f"metrics complete after {time.monotonic() - started:.1f}s")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert f"http://127.0.0.1:{port}/metrics" in out
    assert 'psql "postgresql://' in out
    assert "collected" in out  # at least one progress line
