"""Test support: a background event loop, and real Postgres databases for tests.

Postgres is real in every test that touches data: ``DATABASE_URL`` when set, otherwise an
embedded PostgreSQL 18 from pip (``exporter/embedded.py``), so a fresh machine needs nothing else.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg

T = TypeVar("T")


class ThreadLoop:
    """An asyncio loop in a daemon thread, for servers that must run while a test blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(_cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def sqlalchemy_url(url: str) -> str:
    """agno's PostgresDb takes SQLAlchemy URLs."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]


class PgServer:
    """One Postgres server for the session; a fresh database per test."""

    def __init__(self) -> None:
        self._embedded: Any = None
        url = os.environ.get("DATABASE_URL")
        if not url:
            from exporter.embedded import start_embedded

            # ephemeral: removed at stop(), and by the server's watchdog if this process is killed
            self._embedded = start_embedded(tempfile.mkdtemp(prefix="aepg-"), ephemeral=True)
            url = self._embedded.url
        self.url = url

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return with_database(self.url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exporter_cmd() -> list[str]:
    """The installed console script, as a user runs it (``python -m exporter.cli`` from a bare checkout)."""
    exe = shutil.which("agno-exporter")
    return [exe] if exe else [sys.executable, "-m", "exporter.cli"]
