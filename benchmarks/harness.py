"""What every benchmark shares: the exporter as users run it, timing, memory, and the result shape.

The exporter is built exactly as ``agno-exporter collect`` builds it (:class:`exporter.commands.service.Service`
from settings), so a benchmark measures the product, not a rearranged copy of it.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from exporter.commands.service import Service
from exporter.config import load_settings
from exporter.records.runs import FINAL_STATUSES

FINAL = sorted(FINAL_STATUSES)


@dataclass
class Result:
    """One benchmark: our value, the baseline measured in the same run, and how they compare.

    ``ratio`` is always "how many times better than the baseline" (value/baseline when higher is
    better, baseline/value when lower is better), so > 1 means ahead of the baseline.
    """

    value: float
    unit: str
    baseline: float
    baseline_label: str
    higher_is_better: bool
    target: str = ""
    size: str = ""

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.value / self.baseline if self.baseline else float("inf")
        return self.baseline / self.value if self.value else float("inf")

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def make_service(url: str, state_schema: str, **sections: dict[str, Any]) -> Service:
    overrides: dict[str, dict[str, Any]] = {
        "database": {"url": url},
        "state": {"schema": state_schema},
        "web": {"listen": "127.0.0.1:0"},
        "log": {"level": "warning"},
    }
    for key, values in sections.items():
        overrides.setdefault(key, {}).update(values)
    return Service(load_settings(None, environ={}, overrides=overrides))


def expected_totals(url: str) -> tuple[int, int]:
    """(finished runs, their input+output tokens) straight from agno's rows: what the export must equal.

    Workflow runs carry no tokens of their own (their step runs do), as in :mod:`exporter.records.runs`.
    """
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(CASE WHEN run_type <> 'workflow' THEN"
            " coalesce((run_data->'metrics'->>'input_tokens')::bigint, 0)"
            " + coalesce((run_data->'metrics'->>'output_tokens')::bigint, 0) END), 0)"
            " FROM ai.agno_runs WHERE status = ANY(%s)", (FINAL,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def check_exact(service: Service, url: str) -> None:
    """Exactness is not negotiable: a fast exporter with wrong totals is a failed benchmark."""
    runs = sum(s.total for s in service.store.series("agno_runs").values())
    tokens = sum(s.total for labels, s in service.store.series("agno_tokens").items()
                 if labels[-1] in ("input", "output"))
    want_runs, want_tokens = expected_totals(url)
    if (runs, tokens) != (want_runs, want_tokens):
        raise AssertionError(f"exported {runs} runs / {tokens} tokens, agno's rows hold {want_runs} / {want_tokens}")


def metric_totals(body: bytes, runs: str = "agno_runs_total", tokens: tuple[str, ...] = ("agno_tokens_total",),
                  token_label: str | None = "token_type") -> tuple[int, int]:
    """(runs, input+output tokens) summed over a ``/metrics`` body in the text format.

    For our exposition tokens are one family with a ``token_type`` label; for a peer configured
    with one metric per token type, pass those sample names and ``token_label=None``."""
    from prometheus_client.parser import text_string_to_metric_families

    n_runs, n_tokens = 0.0, 0.0
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == runs:
                n_runs += s.value
            elif s.name in tokens and (token_label is None or s.labels.get(token_label) in ("input", "output")):
                n_tokens += s.value
    return round(n_runs), round(n_tokens)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with few samples, report a sample that happened)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """Resident set size now and at its peak (VmRSS, VmHWM), in KiB, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


def cpu_ns(pid: int) -> int | None:
    """CPU time of every live thread of ``pid`` in nanoseconds (/proc/<pid>/task/*/schedstat, whose
    first field is the time spent running: nanosecond resolution, where /proc/<pid>/stat counts
    10 ms ticks). None when the process is not readable here (another host, another user)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks)
    except (OSError, ValueError, IndexError):
        return None


def children_cpu_seconds(pid: int) -> float | None:
    """CPU of the reaped children of ``pid`` (cutime + cstime of /proc/<pid>/stat, 10 ms ticks).

    For the postmaster this is where parallel workers end up: each exits after its query, so it
    cannot be read while the query runs, and the postmaster reaps it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (of a Postgres backend: the postmaster), or None if not readable."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def server_cpu_ns(url: str) -> int | None:
    """CPU of the whole Postgres server behind ``url`` in nanoseconds: the postmaster, every live child
    (backends, WAL writer, checkpointer, autovacuum: what the measured work makes it do) and the reaped
    ones (parallel workers, exited backends; 10 ms ticks). None when the server is not on this host or
    not readable here."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        postmaster = parent_pid(row[0]) if row else None  # while the backend lives
    own = cpu_ns(postmaster) if postmaster is not None else None
    reaped = children_cpu_seconds(postmaster) if postmaster is not None else None
    if postmaster is None or own is None or reaped is None:
        return None
    total = own + int(reaped * 1e9)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat.parent.name)
        if parent_pid(pid) == postmaster:
            total += cpu_ns(pid) or 0
    return total
