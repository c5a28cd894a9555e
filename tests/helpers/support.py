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
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

T = TypeVar("T")

# Programs the suite runs that pip cannot install, and how to get them (Debian/Ubuntu).
SYSTEM_TOOLS = {"prometheus": "apt-get install prometheus", "promtool": "apt-get install prometheus"}
# How long a test waits for a condition before it fails. Generous: a loaded machine only makes a test
# slower, never failing; a test that works returns as soon as its condition holds.
DEADLINE = 60.0


async def eventually(condition: Callable[[], bool], what: str, timeout: float = DEADLINE, step: float = 0.05) -> None:
    """Wait until ``condition()`` (in-process state, no blocking I/O) holds; AssertionError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(step)


def polls_done(registry: Any) -> float:
    """Successful polls of a service's collector so far (its poll duration histogram's count)."""
    return float(registry.get_sample_value("agno_exporter_poll_duration_seconds_count") or 0.0)


async def more_polls(registry: Any, n: int = 3) -> None:
    """Wait until the collector has finished ``n`` more polls: "nothing more happens" is then
    checked over polls that really ran, however slow the machine."""
    target = polls_done(registry) + n
    await eventually(lambda: polls_done(registry) >= target, f"{n} more polls")


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
            self._embedded.stop()  # ephemeral: stops the server and removes its data directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exporter_cmd() -> list[str]:
    """The installed console script, as a user runs it (``python -m exporter.commands.cli`` from a bare checkout)."""
    exe = shutil.which("agno-exporter")
    return [exe] if exe else [sys.executable, "-m", "exporter.commands.cli"]


async def close_clients(model: Any) -> None:
    """Close the HTTP clients an agno model opened (agno keeps them for the model's life, never closing)."""
    for attr in ("async_client", "client"):
        client = getattr(model, attr, None)
        if client is None:
            continue
        aio = getattr(client, "aio", None)  # google-genai: one Client, its async half under .aio
        if aio is not None:
            await aio.aclose()
        for name in ("aclose", "close"):
            close = getattr(client, name, None)
            if close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
                break


async def close_all_model_clients() -> None:
    """Close the clients of every agno model alive, copies included: agno's memory, session-summary
    and reasoning managers call deep copies of the model they were given, whose clients nobody holds."""
    import gc

    from agno.models.base import Model

    for obj in gc.get_objects():
        if isinstance(obj, Model):
            await close_clients(obj)
def system_tool(name: str) -> str:
    """Path of ``name`` (a key of :data:`SYSTEM_TOOLS`) on PATH.

    Missing: the test is skipped with the install command as the reason, so ``pytest -rs`` says what
    to install. Under CI (the ``CI`` environment variable set, as ``.ci/run`` and CI services do) a
    missing tool fails the test instead: CI must run every test, never skip one quietly.
    """
    path = shutil.which(name)
    if path:
        return path
    reason = f"needs {name} on PATH: {SYSTEM_TOOLS[name]}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: in CI this test must run, not skip)", pytrace=False)
    pytest.skip(reason)
