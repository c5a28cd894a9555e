"""The benchmark's Postgres: the same server rules as the tests (``DATABASE_URL``, else embedded).

The tests' :class:`PgServer` lives in ``tests/support.py``; the benchmarks reuse it (and the
tests' agno app) rather than keeping a copy, so both pick a server the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def use_test_support() -> None:
    """Make ``support`` and ``agno_app`` importable, as tests/conftest.py does for the tests."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
