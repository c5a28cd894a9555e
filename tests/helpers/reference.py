"""The real rows agno 3.1.10 and 2.9.0 wrote (``tests/fixtures``, see its README), as test inputs.

Everything is read from inside the repository, so a fresh clone runs the suite with nothing beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load(name: str) -> list[dict[str, Any]]:
    """The rows of ``tests/fixtures/<name>`` (a JSON array of ``to_jsonb`` table rows)."""
    path = FIXTURES / name
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return data


def runs_v3() -> list[dict[str, Any]]:
    """agno 3.1.10's ``ai.agno_runs``: five runs (see tests/fixtures/README.md)."""
    return load("agno-3.1.10/agno_runs.json")


def sessions_v3() -> list[dict[str, Any]]:
    """agno 3.1.10's ``ai.agno_sessions``: the sessions of those runs, with agno's ``session_metrics``."""
    return load("agno-3.1.10/agno_sessions.json")


def sessions_v2() -> list[dict[str, Any]]:
    """agno 2.9.0's ``ai.agno_sessions``: one session whose ``runs`` column holds one agent run."""
    return load("agno-2.9.0/agno_sessions.json")


MATRIX_RELEASES = ("2.1.10", "2.3.26", "2.9.0", "3.1.10")


def matrix_sessions(version: str) -> list[dict[str, Any]]:
    """``ai.agno_sessions`` rows of one release's matrix scenario: PlainAgent (three runs), FinanceTeamTwice
    (two team runs and their members), HoldingTeam (a team inside a team); 2.x rows hold their runs."""
    return load(f"agno-{version}/matrix_sessions.json")


def matrix_runs(version: str) -> list[dict[str, Any]]:
    """``ai.agno_runs`` rows of those sessions (agno 3.x only)."""
    return load(f"agno-{version}/matrix_runs.json")
