"""Smoke test of the benchmark command: it runs end to end and reports every benchmark.

No assertion on time (these machines are shared and noisy): speed is read from the numbers the
command prints, next to baselines measured in the same run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

BENCHMARKS = ("ingest_metrics", "ingest_metrics_vs_agno_api", "ingest_spans", "idle_poll", "idle_poll_p95",
              "idle_poll_cpu", "idle_poll_cpu_p95", "idle_poll_no_index", "scrape_vs_query_exporter",
              "freshness_p50", "freshness_p99", "freshness_wake_p50", "freshness_wake_p99", "notify_trigger_commit",
              "scrape_openmetrics", "scrape_text", "rss_peak", "agent_run_overhead")


@pytest.mark.slow
def test_quick_benchmarks_report_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert set(BENCHMARKS) <= set(results)
    for name in BENCHMARKS:
        r = results[name]
        for key in ("value", "baseline", "ratio"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (name, key, r)
        assert r["unit"], name
    for name in BENCHMARKS:  # the printed table names each one
        assert name in proc.stdout
    # the peer under deletes: ours keeps its totals (query-exporter's, when installed, drop)
    deletes = results["_details"]["deletes"]
    assert deletes["deleted_runs"] > 0 and deletes["after"]["ours"] == deletes["before"]["ours"]
    assert "under deletes" in proc.stdout
