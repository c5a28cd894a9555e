"""Real agno 2.x data for tests: an isolated agno 2.9 virtualenv, its writer, and agno 3.x's own migration.

The project runs agno 3.x; agno 2.x databases (finished runs as a JSON array in ``agno_sessions.runs``)
are written here by REAL agno 2.9 in a virtualenv of its own, never by hand-made rows:

- ``agno2_venv()`` builds the virtualenv once per machine and pinned requirement set (cached under
  ``~/.cache/agno-exporter/venvs/``; ``AGNO_EXPORTER_CACHE`` moves it). Two pytest processes may race:
  each builds in a temporary directory and renames it into place; the loser throws its copy away.
- the ``agno2_python`` fixture returns that virtualenv's python, and FAILS the test (never skips it)
  when the virtualenv cannot be built, e.g. without access to the package index.
- ``write_agno2()`` runs ``agno2_writer.py`` (agno 2.9 only) and returns what agno 2.9 itself reports
  for every run and session.
- ``migrate_sessions()`` applies agno 3.x's OWN v3.0.0 migration
  (``agno.db.migrations.versions.v3_0_0.up`` → ``_migrate_postgres_sessions``) to all or some sessions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support import sqlalchemy_url

AGNO2_VERSION = "2.9.0"
# The full resolved set, pinned: a change of any line gives a new cache key, hence a fresh virtualenv.
AGNO2_REQUIREMENTS = (
    f"agno=={AGNO2_VERSION}",
    "openai==3.57.0",
    "SQLAlchemy==2.1.9",
    "greenlet==3.5.6",  # agno.db.postgres imports sqlalchemy.ext.asyncio
    "psycopg[binary]==3.3.9",
    "psycopg-binary==3.3.9",
    # agno.workflow imports fastapi (agno/workflow/remote.py), which needs these two
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "opentelemetry-api==1.45.2",
    "agnoctl==0.2.1",
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "certifi==2026.10.19.post1",
    "docstring_parser==0.18.0",
    "h11==0.16.0",
    "h2==4.4.1",
    "hpack==4.2.0",
    "httpcore==1.0.9",
    "httpcore2==2.16.2",
    "httpx==0.28.1",
    "httpx2==2.16.2",
    "hyperframe==6.1.0",
    "idna==3.20",
    "jiter==0.19.0",
    "markdown-it-py==4.3.0",
    "mdurl==0.1.2",
    "packaging==26.3",
    "prompt_toolkit==3.0.53",
    "pydantic==2.14.4",
    "pydantic-settings==2.16.3",
    "pydantic_core==2.50.5",
    "Pygments==2.21.0",
    "python-dotenv==1.2.4",
    "PyYAML==6.0.4",
    "questionary==2.1.1",
    "rich==15.0.0",
    "shellingham==1.5.4",
    "sniffio==1.3.1",
    "truststore==0.10.5",
    "typer==0.29.2",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "wcwidth==0.9.4",
)
WRITER = Path(__file__).with_name("agno2_writer.py")
BUILD_TIMEOUT = 900
_MARKER = "agno2-requirements.txt"  # written last: a directory without it is not a finished venv


class Agno2VenvError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("AGNO_EXPORTER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "agno-exporter")
    return Path(base) / "venvs"


def requirements_text() -> str:
    return "\n".join(AGNO2_REQUIREMENTS) + "\n"


def venv_key() -> str:
    """Pinned requirements + the interpreter the venv is made from (its bin/python links to it)."""
    h = hashlib.sha256()
    h.update(requirements_text().encode())
    h.update(f"{sys.implementation.name} {sys.version} {os.path.realpath(sys.base_prefix)}".encode())
    return h.hexdigest()[:16]


def venv_dir() -> Path:
    return cache_root() / f"agno-{AGNO2_VERSION}-{venv_key()}"


def _venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def _ready(path: Path) -> bool:
    marker = path / _MARKER
    return marker.is_file() and marker.read_text() == requirements_text() and _venv_python(path).exists()


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        raise Agno2VenvError(f"{what}: timed out after {BUILD_TIMEOUT}s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise Agno2VenvError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def agno2_venv() -> Path:
    """The agno 2.9 virtualenv's python, built on first use (a few tens of seconds) and cached."""
    final = venv_dir()
    if _ready(final):
        return _venv_python(final)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    # The lock only saves a second process from building a copy it would throw away; correctness comes
    # from building in a temporary directory and renaming it into place.
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(final):
            return _venv_python(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=root))
        try:
            # Only bin/python is ever used: it stays valid after the rename (console scripts' shebangs do not).
            _run([sys.executable, "-m", "venv", str(tmp)], "creating the agno 2.x virtualenv")
            req = tmp / "requirements.txt"
            req.write_text(requirements_text())
            _run([str(_venv_python(tmp)), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                  "-q", "-r", str(req)], f"pip install agno=={AGNO2_VERSION} into {tmp}")
            _run([str(_venv_python(tmp)), "-c",
                  "import agno.agent, agno.team, agno.workflow, agno.db.postgres, agno.models.openai, psycopg"],
                 "importing agno 2.x in its virtualenv")
            (tmp / _MARKER).write_text(requirements_text())
            if final.exists():  # a stale or broken copy: set it aside, then replace it
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not _ready(final):  # lost a race to a process without the lock (other machine user?)
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return _venv_python(final)


@pytest.fixture(scope="session")
def agno2_python() -> str:
    """Path of the agno 2.9 python. Fails (never skips) when the virtualenv cannot be built."""
    started = time.monotonic()
    error = None
    try:
        python = agno2_venv()
    except Agno2VenvError as e:
        error = str(e)
    if error is not None:
        pytest.fail(
            f"cannot build the agno {AGNO2_VERSION} virtualenv for the agno 2.x tests "
            f"(needs the package index once; cached in {cache_root()} afterwards):\n{error}",
            pytrace=False,
        )
    elapsed = time.monotonic() - started
    if elapsed > 5:
        sys.stderr.write(f"\nbuilt the agno {AGNO2_VERSION} virtualenv in {elapsed:.0f}s: {python}\n")
    return str(python)


def write_agno2(python: str, db_url: str, llm_url: str, scenario: str = "basic", *, n: int = 30,
                concurrency: int = 8, timeout: float = 180, schema: str = "ai",
                session_table: str | None = None) -> dict[str, Any]:
    """Run real agno 2.9 (``agno2_writer.py``) against ``db_url``; return what agno 2.9 reports.

    ``db_url`` is a libpq/psycopg URL (as the ``db_url`` fixture gives); the writer gets the SQLAlchemy form.
    """
    cmd = [python, "-I", str(WRITER), "--db-url", sqlalchemy_url(db_url), "--llm-url", llm_url,
           "--scenario", scenario, "--n", str(n), "--concurrency", str(concurrency), "--schema", schema,
           *(["--session-table", session_table] if session_table else [])]
    # -I: no PYTHONPATH, no user site, no script directory: the project's `exporter` is out of reach.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise AssertionError(f"agno 2.x writer ({scenario}) exited {proc.returncode}:\n{tail}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"agno 2.x writer printed no JSON: {proc.stdout[:2000]!r}") from e
    return result


def _agno3_db(db_url: str, schema: str) -> Any:
    from agno.db.postgres import PostgresDb

    return PostgresDb(db_url=sqlalchemy_url(db_url), db_schema=schema)


def migrate_sessions(db_url: str, session_ids: Iterable[str] | None = None, *, schema: str = "ai") -> None:
    """Apply agno 3.x's own v3.0.0 sessions migration, to every session or only to ``session_ids``.

    All sessions: ``MigrationManager(db).up(table_type="sessions")``, exactly what a user runs; it copies
    every run of ``agno_sessions.runs`` into ``agno_runs`` and stamps agno_sessions 3.0.0.

    Some sessions: agno's migration has no session filter, so the other sessions' ``runs`` are set aside
    (moved to a scratch table, column set to NULL, which agno's ``WHERE runs IS NOT NULL`` skips), agno's
    ``v3_0_0.up(db, "sessions", ...)`` runs, and the set-aside blobs are put back byte for byte; nothing
    else of those rows changes (no trigger touches updated_at). The schema version is NOT stamped, as a
    migration that stopped half way would not have stamped it. Not for a database agno is writing to.
    """
    import asyncio

    from agno.db.migrations.manager import MigrationManager
    from agno.db.migrations.versions import v3_0_0

    db = _agno3_db(db_url, schema)
    try:
        if session_ids is None:
            asyncio.run(MigrationManager(db).up(table_type="sessions"))
            return
        keep = list(session_ids)
        table = sql.Identifier(schema, db.session_table_name)
        scratch = sql.Identifier(schema, "_agno2_harness_set_aside")
        with psycopg.connect(db_url) as conn:
            conn.execute(sql.SQL("CREATE TABLE {} AS SELECT session_id, runs FROM {} "
                                 "WHERE runs IS NOT NULL AND NOT (session_id = ANY(%s))").format(scratch, table),
                         [keep])
            conn.execute(sql.SQL("UPDATE {} t SET runs = NULL FROM {} s WHERE t.session_id = s.session_id")
                         .format(table, scratch))
        try:
            v3_0_0.up(db, "sessions", db.session_table_name)
        finally:
            with psycopg.connect(db_url) as conn:
                conn.execute(sql.SQL("UPDATE {} t SET runs = s.runs FROM {} s WHERE t.session_id = s.session_id")
                             .format(table, scratch))
                conn.execute(sql.SQL("DROP TABLE {}").format(scratch))
    finally:
        with contextlib.suppress(Exception):
            db.db_engine.dispose()
