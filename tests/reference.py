"""The real rows agno 3.1.10 and 2.9.0 wrote (../shared/reference), as test inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def load(name: str) -> list[dict[str, Any]]:
    path = REFERENCE / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: CI clones the repo with shared/ beside it")
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return data


def runs_v3() -> list[dict[str, Any]]:
    return load("agno-3.1.10/agno_runs.json")


def sessions_v3() -> list[dict[str, Any]]:
    return load("agno-3.1.10/agno_sessions.json")
