"""Connections to Postgres: one place that knows how we connect and what a connection promises.

Every connection carries a statement timeout, TCP keepalives (a stalled network is noticed), an
application_name (visible in pg_stat_activity) and no JIT compilation (see :func:`connect`). Reads
of agno's tables run in read-only transactions. URLs are shown only through :func:`redact`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

_PASSWORD_RE = re.compile(r"(://[^:/@]*:)[^@]*(@)")
_PASSWORD_KV_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
_URL_PASSWORD_RE = re.compile(r"://[^:/@]*:([^@]*)@")


def redact(text: str, url: str | None = None) -> str:
    """Hide passwords in URLs and conninfo strings (for logs, errors and pages).

    With ``url``, its password is also hidden where a message quotes it as a token (libpq's parse
    errors quote the offending token, e.g. ``invalid percent-encoded token: "p%zz"``): only between
    quotes or URL delimiters, never inside other words, so a password such as ``p`` or ``server`` does
    not turn "port 1" into "***ort 1" (which garbles the message and gives the password away).
    """
    text = _PASSWORD_KV_RE.sub(r"\1***", _PASSWORD_RE.sub(r"\1***\2", text))
    if url:
        found = [m.group(1) for m in _URL_PASSWORD_RE.finditer(url)]
        found += [m.group(2).strip("'") for m in _PASSWORD_KV_RE.finditer(url)]
        for secret in sorted({v for f in found for v in (f, unquote(f)) if v}, key=len, reverse=True):
            text = re.sub(r"(?<=[\"'=:])" + re.escape(secret) + r"(?=[\"'@&\s]|$)", "***", text)
    return text


def one_line(exc: BaseException | str) -> str:
    """An error's message on one line: libpq's messages span lines ("...\n\tIs the server running ...?"), and a
    log line or a `check` line is one line."""
    return " ".join(str(exc).split())


def plain_url(url: str) -> str:
    """agno's SQLAlchemy URLs (``postgresql+psycopg://``) -> a libpq URL."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)


@dataclass(frozen=True)
class ConnectOptions:
    url: str
    application_name: str = "agno-exporter"
    statement_timeout: float = 30.0
    connect_timeout: float = 10.0
    read_only: bool = False


def loads_json(data: bytes | bytearray | memoryview | str) -> Any:
    """orjson parses agno's run_data three times faster than the standard library (it was a third of
    the fetch in profiles). Integers beyond 64 bits come back as floats, the value Prometheus keeps
    of them anyway; a document orjson refuses (numbers beyond float range, which jsonb allows) is
    parsed by the standard library, so one odd row is rejected by the record builder as before
    instead of failing the whole page."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)


Connector = Callable[[], "psycopg.AsyncConnection[dict[str, Any]]"]


async def connect(opts: ConnectOptions) -> psycopg.AsyncConnection[dict[str, Any]]:
    # jit=off: the exporter's statements are short, and the planner's estimate for the run-data
    # projection's nested subqueries (source.RUN_DATA_PROJECTION) crosses jit_above_cost, so each
    # fetch of 20 runs spent ~140 ms compiling (measured on PostgreSQL 15) to run in under 1 ms.
    options = f"-c statement_timeout={int(opts.statement_timeout * 1000)} -c jit=off"
    if opts.read_only:
        options += " -c default_transaction_read_only=on"
    try:
        conn = await psycopg.AsyncConnection.connect(
            plain_url(opts.url),
            autocommit=True,
            row_factory=dict_row,
            application_name=opts.application_name,
            connect_timeout=max(1, int(opts.connect_timeout)),
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
            options=options,
        )
    except psycopg.Error as exc:
        raise psycopg.OperationalError(redact(str(exc), opts.url)) from None
    set_json_loads(loads_json, conn)
    return conn


class Database:
    """A lazily (re)opened connection: the collector works sequentially and needs just one.

    A broken connection is closed and reopened by the next call, so a database restart is
    survived without any caller holding stale state.
    """

    def __init__(self, opts: ConnectOptions) -> None:
        self.opts = opts
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None

    async def conn(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                await self._conn.close()
            self._conn = await connect(self.opts)
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        conn = await self.conn()
        try:
            async with conn.transaction():
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError):
            await self.close()
            raise

    @asynccontextmanager
    async def statement(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        """For one statement, which is atomic on its own: no BEGIN/COMMIT round trips around it."""
        conn = await self.conn()
        try:
            yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError):
            await self.close()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
