"""Where the repository is, for tests that run its files (README, docker-compose.yml, .ci/run, grafana/).

Found by walking up from this file to the directory holding ``pyproject.toml``, so a test never
reaches a path outside the clone, whichever tier folder it sits in.
"""

from __future__ import annotations

from pathlib import Path

ROOT = next(d for d in Path(__file__).resolve().parents if (d / "pyproject.toml").is_file())
