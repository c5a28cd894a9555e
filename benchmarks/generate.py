"""Multiply captured agno rows into a table of realistic size, bulk-loaded with COPY.

Each generated run is a copy of a row agno wrote (see :mod:`benchmarks.capture`) with fresh run
and session ids, an agent/team name from a few variants per captured name, a user, timestamps
spread over the past weeks (all shifted together, so tool and message times stay inside the run),
durations scaled by a random factor, and its text padded with words so run_data sizes spread
from about 1 KB to 50 KB (log-scale triangular, median about 4.5 KB). Sessions hold one to four
top-level runs, each with its member runs; every session gets its agno_sessions row with the
totals agno would store. A small share of runs is left RUNNING (no metrics yet), as in a live
database. Loading is incremental: :func:`load` appends until the table holds ``total`` runs, so
one database serves every size of a benchmark run.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from exporter.records.runs import FINAL_STATUSES, TOKEN_FIELDS

from .capture import Captured

MIN_BYTES, MODE_BYTES, MAX_BYTES = 1_000, 2_500, 50_000
NAME_VARIANTS = 16  # names per captured agent/team name: about 10^4 series served (the memory target's)
USERS = 1000
SESSION_RUNS = (1, 4)  # top-level runs per session
OPEN_SHARE = 0.001  # runs still RUNNING
HISTORY = 30 * 86400.0  # runs spread over this many seconds before...
QUIET = 7200.0  # ...this many seconds ago: no generated run is new to an idle poll
_WORDS = (
    "the", "market", "data", "shows", "steady", "volume", "while", "analysts", "expect", "moderate", "growth",
    "across", "sectors", "and", "outlook", "remains", "balanced", "with", "some", "risk", "from", "rates",
    "earnings", "supply", "chains", "so", "a", "diversified", "view", "still", "looks", "reasonable", "for",
    "now", "revenue", "guidance", "margin", "quarter", "forecast", "dividend",
)


@dataclass
class Generator:
    captured: list[Captured]
    seed: int = 1
    now: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        # A long random text to slice padding from: realistic compressibility, no per-row cost.
        self.corpus = " ".join(self.rng.choice(_WORDS) for _ in range(200_000))

    def _size(self) -> int:
        return int(10 ** self.rng.triangular(math.log10(MIN_BYTES), math.log10(MAX_BYTES), math.log10(MODE_BYTES)))

    def _pad(self, n: int) -> str:
        if n <= 0:
            return ""
        start = self.rng.randrange(0, len(self.corpus) - n) if n < len(self.corpus) else 0
        return " " + self.corpus[start:start + n]

    def sessions(self) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Endless (session row, its run rows)."""
        while True:
            session_id = str(uuid.uuid4())
            user_id = f"user-{self.rng.randrange(USERS)}"
            units = [self.rng.choice(self.captured) for _ in range(self.rng.randint(*SESSION_RUNS))]
            first = units[0]
            variant = self.rng.randrange(NAME_VARIANTS)
            start = self.now - QUIET - self.rng.uniform(0, HISTORY)
            runs: list[dict[str, Any]] = []
            for unit in units:
                if unit.run_type != first.run_type:
                    unit = first  # a session belongs to one agent or team
                shift = start - float(unit.rows[0]["created_at"])
                scale = self.rng.lognormvariate(0, 0.5)
                parent_ids = {r["run_id"]: str(uuid.uuid4()) for r in unit.rows}
                open_run = self.rng.random() < OPEN_SHARE
                for row in unit.rows:
                    runs.append(self._run(row, parent_ids, session_id, user_id, variant, shift, scale,
                                          len(runs), open_run and row is unit.rows[0]))
                start += self.rng.uniform(5, 600)
            yield self._session(first.session, session_id, user_id, variant, runs), runs

    def _run(self, row: dict[str, Any], ids: dict[str, str], session_id: str, user_id: str, variant: int,
             shift: float, scale: float, index: int, open_run: bool) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(json.dumps(row["run_data"]))
        out = dict(row)
        out["run_id"] = data["run_id"] = ids[row["run_id"]]
        if row["parent_run_id"]:
            out["parent_run_id"] = data["parent_run_id"] = ids.get(row["parent_run_id"], row["parent_run_id"])
        out["session_id"] = data["session_id"] = session_id
        out["user_id"] = user_id
        out["run_index"] = index
        if variant and not row["parent_run_id"]:  # member runs keep their names: members are shared
            for key, col in (("agent_name", "agent_id"), ("team_name", "team_id")):
                if data.get(key):
                    data[key] = f"{data[key]}{variant + 1}"
                    out[col] = data[key].lower()
                    if col in data:
                        data[col] = out[col]
        _shift_times(data, shift)
        out["created_at"] = int(row["created_at"] + shift)
        metrics = data.get("metrics") or {}
        for key in ("duration", "time_to_first_token"):
            if isinstance(metrics.get(key), float):
                metrics[key] *= scale
        out["updated_at"] = out["created_at"] + math.ceil(metrics.get("duration") or 0)
        if open_run:
            out["status"] = data["status"] = "RUNNING"
            data["metrics"] = {}
        for msg in data.get("messages") or []:
            if msg.get("role") == "user":
                msg["content"] = f"{msg.get('content') or ''}{self._pad(self._size() - len(json.dumps(data)))}"
                break
        out["run_data"] = json.dumps(data)
        return out

    def _session(self, template: dict[str, Any], session_id: str, user_id: str, variant: int,
                 runs: list[dict[str, Any]]) -> dict[str, Any]:
        """The session row agno would hold: its totals summed over every run, members included."""
        out = dict(template)
        out["session_id"] = session_id
        out["user_id"] = user_id
        out["created_at"] = min(r["created_at"] for r in runs)
        out["updated_at"] = max(r["updated_at"] for r in runs)
        kind = template["session_type"]
        top = json.loads(runs[0]["run_data"])
        if variant and template.get(f"{kind}_data"):
            entity = dict(template[f"{kind}_data"])
            entity["name"] = top.get(f"{kind}_name", entity.get("name"))
            out[f"{kind}_data"] = entity
            out[f"{kind}_id"] = runs[0][f"{kind}_id"]
        totals: dict[str, int | float] = {}
        for r in runs:
            metrics = json.loads(r["run_data"]).get("metrics") or {}
            for fname, _ in (*TOKEN_FIELDS, ("total_tokens", "")):
                if metrics.get(fname):
                    totals[fname] = totals.get(fname, 0) + metrics[fname]
            if metrics.get("cost"):
                totals["cost"] = totals.get("cost", 0.0) + metrics["cost"]
        session_data = dict(template.get("session_data") or {})
        session_data["session_metrics"] = totals
        out["session_data"] = session_data
        return out


    def fresh(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A session whose runs finish now, its top-level run renamed ``name`` (to spot it in /metrics)."""
        session, runs = next(self.sessions())
        while any(r["status"] not in FINAL_STATUSES for r in runs):
            session, runs = next(self.sessions())
        now = int(time.time())
        for r in runs:
            r["created_at"] = r["updated_at"] = now
        data = json.loads(runs[0]["run_data"])
        data[f"{runs[0]['run_type']}_name"] = name
        runs[0]["run_data"] = json.dumps(data)
        session["created_at"] = session["updated_at"] = now
        return session, runs


def _shift_times(data: dict[str, Any], shift: float) -> None:
    if isinstance(data.get("created_at"), int):
        data["created_at"] = int(data["created_at"] + shift)
    for item in (data.get("messages") or []) + (data.get("tools") or []):
        if isinstance(item.get("created_at"), int):
            item["created_at"] = int(item["created_at"] + shift)
        m = item.get("metrics") or {}
        for key in ("start_time", "end_time"):
            if isinstance(m.get(key), float):
                m[key] += shift


def _jsonb(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def table_runs(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM ai.agno_runs").fetchone()
    return int(row[0]) if row else 0


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'ai' AND table_name = %s"
        " ORDER BY ordinal_position", (table,)).fetchall()]


def copy_in(conn: psycopg.Connection[Any], chunk: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
    """COPY sessions and their runs (sessions first: agno_runs.session_id references agno_sessions)."""
    run_cols, sess_cols = _columns(conn, "agno_runs"), _columns(conn, "agno_sessions")
    with conn.cursor() as cur:
        with cur.copy(f"COPY ai.agno_sessions ({', '.join(sess_cols)}) FROM STDIN") as copy:
            for s, _ in chunk:
                copy.write_row([_jsonb(s.get(c)) if isinstance(s.get(c), (dict, list)) else s.get(c)
                                for c in sess_cols])
        with cur.copy(f"COPY ai.agno_runs ({', '.join(run_cols)}) FROM STDIN") as copy:
            for _, runs in chunk:
                for r in runs:
                    copy.write_row([_jsonb(r.get(c)) if c == "run_data" else r.get(c) for c in run_cols])


def load(url: str, gen: Generator, total: int) -> tuple[int, float]:
    """Append generated runs until ``ai.agno_runs`` holds at least ``total``; returns (rows added, seconds)."""
    t0 = time.perf_counter()
    have = table_runs(url)
    added = 0
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = off")  # a bulk load; durability is not what we measure
        sessions = gen.sessions()
        while have + added < total:
            chunk: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            n = 0
            while have + added + n < total and n < 20_000:
                s, runs = next(sessions)
                chunk.append((s, runs))
                n += len(runs)
            copy_in(conn, chunk)
            conn.commit()
            added += n
        conn.execute("ANALYZE ai.agno_runs")
        conn.execute("ANALYZE ai.agno_sessions")
        conn.commit()
    return added, time.perf_counter() - t0
