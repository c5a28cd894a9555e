"""Real data from older agno releases: a virtualenv per release, the writer, and agno 3.x's own migration.

The project runs agno 3.1; users run agno 2.1 through 3.1, and what agno stores changed between
releases (README: "agno releases"). Each release in ``RELEASES`` (one per storage convention) writes
its data here, REAL agno in a virtualenv of its own, never hand-made rows:

- ``release_venv(release)`` builds the release's virtualenv once per machine and pinned requirement
  set (cached under ``~/.cache/agno-exporter/venvs/``; ``AGNO_EXPORTER_CACHE`` moves it). Several
  pytest processes may ask at once: an flock per virtualenv lets one build while the others wait,
  and the build happens in a temporary directory renamed into place. A failed build is tried once
  per process and reported by ``release_python()``, which FAILS the test (never skips it), e.g.
  without access to the package index. The installed agno (3.1.10) needs no virtualenv.
- the ``agno2_python`` fixture is the agno 2.9 python (the 2.x layout and migration tests).
- ``write_agno2()`` runs ``agno2_writer.py`` with a release's python and returns what that release
  itself reports for every run and session.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.helpers.support import sqlalchemy_url

BASE_REQUIREMENTS = (
    "openai==3.57.0",
    "SQLAlchemy==2.1.9",
    "greenlet==3.5.6",  # agno.db.postgres imports sqlalchemy.ext.asyncio
    "psycopg[binary]==3.3.9",
    "psycopg-binary==3.3.9",
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
# agno up to 2.8 also requires these (its Requires-Dist); 2.9 and 3.x dropped them.
GIT_MULTIPART = ("GitPython==3.2.1", "gitdb==4.0.12", "smmap==5.0.3", "python-multipart==0.0.34")


@dataclass(frozen=True)
class Release:
    """One agno release the tests run, and what the survey found it stores (README: agno releases).

    ``team_totals``: what agno's stored team session totals add up: "members" (the team runs and their
    member runs) or "leader" (the team runs' own metrics only: agno 2.3.5-2.5.3). ``nested_members``:
    "unstored" where agno adds the runs of a team inside a team's members to the session totals but
    stores no run for them (2.5.4 and later); older releases neither store nor add them. ``installed``:
    the project's own agno, run by the project's interpreter (no virtualenv).
    """

    version: str
    layout: str  # "v2": runs in agno_sessions.runs; "v3": agno_runs
    team_totals: str
    error_runs_stored: bool  # agno before 2.3.14 raises to the caller and stores nothing
    nested_members: str  # the runs under a team inside a team: "unstored" yet in the totals, or not
    runs_column: str | None = "jsonb"  # type of agno_sessions.runs in a database the release created
    extras: tuple[str, ...] = ()
    installed: bool = False

    @property
    def requirements(self) -> tuple[str, ...]:
        return (f"agno=={self.version}", *BASE_REQUIREMENTS, *self.extras)

    def __str__(self) -> str:
        return f"agno{self.version}"


# One release per storage convention (see the README's release table for what changes where).
RELEASES: dict[str, Release] = {r.version: r for r in (
    # json columns, foreground runs only, a failed run raises; team totals recomputed from every run
    Release("2.1.10", "v2", "members", False, "not added", "json", GIT_MULTIPART),
    # jsonb, ERROR runs stored; a team run adds its own metrics only to the session totals
    Release("2.3.26", "v2", "leader", True, "not added", extras=GIT_MULTIPART),
    # background runs, metrics.details by model role, tool timings; a team run adds its members' again
    # (agno.workflow imports fastapi, agno/workflow/remote.py, which needs starlette; and opentelemetry-api)
    Release("2.9.0", "v2", "members", True, "unstored",
            extras=("fastapi==0.165.0", "starlette==1.10.0", "opentelemetry-api==1.45.2")),
    # the runs table: a row per run
    Release("3.0.11", "v3", "members", True, "unstored", None),
    Release("3.1.10", "v3", "members", True, "unstored", None, installed=True),
)}
AGNO2_VERSION = "2.9.0"
AGNO2_REQUIREMENTS = RELEASES[AGNO2_VERSION].requirements
WRITER = Path(__file__).with_name("agno2_writer.py")
BUILD_TIMEOUT = 900
_MARKER = "agno2-requirements.txt"  # written last: a directory without it is not a finished venv
_failed: dict[str, str] = {}  # release -> why its virtualenv could not be built (tried once per process)


class Agno2VenvError(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("AGNO_EXPORTER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "agno-exporter")
    return Path(base) / "venvs"


def requirements_text(release: Release | None = None) -> str:
    return "\n".join((release or RELEASES[AGNO2_VERSION]).requirements) + "\n"


def venv_key(release: Release | None = None) -> str:
    """Pinned requirements + the interpreter the venv is made from (its bin/python links to it)."""
    h = hashlib.sha256()
    h.update(requirements_text(release).encode())
    h.update(f"{sys.implementation.name} {sys.version} {os.path.realpath(sys.base_prefix)}".encode())
    return h.hexdigest()[:16]


def venv_dir(release: Release | None = None) -> Path:
    release = release or RELEASES[AGNO2_VERSION]
    return cache_root() / f"agno-{release.version}-{venv_key(release)}"


def _venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def _ready(path: Path, release: Release) -> bool:
    marker = path / _MARKER
    return marker.is_file() and marker.read_text() == requirements_text(release) and _venv_python(path).exists()


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        raise Agno2VenvError(f"{what}: timed out after {BUILD_TIMEOUT}s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise Agno2VenvError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def release_venv(release: Release) -> Path:
    """The release's virtualenv python, built on first use (a few tens of seconds) and cached.

    Several pytest processes may ask at once: one builds (an flock per virtualenv), the others wait
    for it and find it ready; each build happens in a temporary directory renamed into place, so a
    killed build never leaves a half-made virtualenv behind.
    """
    if release.installed:
        return Path(sys.executable)
    final = venv_dir(release)
    if _ready(final, release):
        return _venv_python(final)
    if release.version in _failed:  # one attempt per process: the error is reported, not retried
        raise Agno2VenvError(_failed[release.version])
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        with open(root / f".{final.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _ready(final, release):
                return _venv_python(final)
            _build(release, root, final)
    except Agno2VenvError as e:
        _failed[release.version] = str(e)
        raise
    return _venv_python(final)


def _build(release: Release, root: Path, final: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=root))
    try:
        # Only bin/python is ever used: it stays valid after the rename (console scripts' shebangs do not).
        _run([sys.executable, "-m", "venv", str(tmp)], f"creating the agno {release.version} virtualenv")
        req = tmp / "requirements.txt"
        req.write_text(requirements_text(release))
        # Every requirement is pinned, so pip need not resolve (--no-deps); the import below proves the
        # set complete.
        _run([str(_venv_python(tmp)), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
              "--no-deps", "-q", "-r", str(req)], f"pip install agno=={release.version} into {tmp}")
        _run([str(_venv_python(tmp)), "-c",
              "import agno.agent, agno.team, agno.db.postgres, agno.models.openai, psycopg"],
             f"importing agno {release.version} in its virtualenv")
        (tmp / _MARKER).write_text(requirements_text(release))
        if final.exists():  # a stale or broken copy: set it aside, then replace it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _ready(final, release):  # lost a race to a process without the lock (other machine user?)
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def agno2_venv() -> Path:
    """The agno 2.9 virtualenv's python (see release_venv)."""
    return release_venv(RELEASES[AGNO2_VERSION])


def release_python(release: Release) -> str:
    """Path of the release's python. Fails the test (never skips it) when its virtualenv cannot be built."""
    started = time.monotonic()
    error = None
    try:
        python = release_venv(release)
    except Agno2VenvError as e:
        error = str(e)
    if error is not None:
        pytest.fail(
            f"cannot build the agno {release.version} virtualenv for the tests of older agno releases "
            f"(needs the package index once; cached in {cache_root()} afterwards):\n{error}",
            pytrace=False,
        )
    elapsed = time.monotonic() - started
    if elapsed > 5:
        sys.stderr.write(f"\nbuilt the agno {release.version} virtualenv in {elapsed:.0f}s: {python}\n")
    return str(python)


@pytest.fixture(scope="session")
def agno2_python() -> str:
    """Path of the agno 2.9 python. Fails (never skips) when the virtualenv cannot be built."""
    return release_python(RELEASES[AGNO2_VERSION])


def write_agno2(python: str, db_url: str, llm_url: str, scenario: str = "basic", *, n: int = 30,
                concurrency: int = 8, timeout: float = 180, schema: str = "ai",
                session_table: str | None = None, session_id: str | None = None) -> dict[str, Any]:
    """Run real agno (``agno2_writer.py``, with the release's ``python``) against ``db_url``; return what
    that release reports.

    ``db_url`` is a libpq/psycopg URL (as the ``db_url`` fixture gives); the writer gets the SQLAlchemy form.
    """
    cmd = [python, "-I", str(WRITER), "--db-url", sqlalchemy_url(db_url), "--llm-url", llm_url,
           "--scenario", scenario, "--n", str(n), "--concurrency", str(concurrency), "--schema", schema,
           *(["--session-table", session_table] if session_table else []),
           *(["--session-id", session_id] if session_id else [])]
    # -I: no PYTHONPATH, no user site, no script directory: the project's `exporter` is out of reach.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise AssertionError(f"agno writer ({python}, {scenario}) exited {proc.returncode}:\n{tail}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"agno writer printed no JSON: {proc.stdout[:2000]!r}") from e
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
