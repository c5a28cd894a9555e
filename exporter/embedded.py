"""An embedded PostgreSQL from pip (pgserver), for `demo` and the tests: nothing else to install.

pgserver ships PostgreSQL binaries in its wheels for CPython 3.11 and 3.12 on Linux and macOS only;
elsewhere we say so and ask for a database URL instead of failing obscurely.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EmbeddedUnavailable(RuntimeError):
    pass


@dataclass
class EmbeddedPostgres:
    url: str
    datadir: Path
    _server: Any

    def stop(self) -> None:
        self._server.cleanup()


def start_embedded(datadir: str | Path) -> EmbeddedPostgres:
    try:
        import pgserver
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "the embedded PostgreSQL needs the 'pgserver' package, whose wheels exist for CPython 3.11 and "
            f"3.12 only (this is {sys.version.split()[0]}): install it, or give a database with --db-url / "
            f"DATABASE_URL ({exc})"
        ) from None
    path = Path(datadir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    # The server listens on a Unix socket inside datadir; its path must stay under ~100 characters.
    if len(str(path)) > 90:
        raise EmbeddedUnavailable(f"data directory path too long for a Unix socket: {path}")
    server = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
    return EmbeddedPostgres(url=server.get_uri(), datadir=path, _server=server)
