"""HTTP: /metrics, /healthz, /readyz and a landing page, served from the asyncio loop we already have.

The landing page answers "is it working?" at a glance, from a :class:`Status` gathered per request:
the last successful poll and its age, the runs counted, the agno tables and layout read, the last
error (credentials masked), the trace backlog when traces are on.

/metrics speaks the Prometheus text format, and OpenMetrics (with exemplars) when the scraper asks
for it. Securing it (TLS, client certificates, basic auth with bcrypt hashes) follows the shape of
Prometheus's exporter-toolkit web config, see :mod:`exporter.web.config`.
"""

from __future__ import annotations

import errno
import html
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.sinks.prometheus.exposition import chunks, render_parts
from exporter.web.config import WebConfig, basic_auth_middleware

if TYPE_CHECKING:
    from exporter.ingest.poll import PollFailure


@dataclass(frozen=True)
class Status:
    """The exporter at a glance: what the landing page shows and /readyz lists, gathered per request.

    Plain values, so another piece of the page is one more field and one more row in :meth:`rows`.
    """

    now: float  # unix time of the request
    collector: str  # ready, not ready (why), standby, off
    database: str  # agno's database, password masked
    state: str | None  # the state's database when it is another one, password masked
    layout: str  # agno 3.x / 2.x / both (source.Layout.version), or not discovered yet
    tables: str  # the agno tables read (source.Layout.describe())
    last_success: float | None  # unix time of the last successful poll
    runs_counted: int  # every run counted in the state (all processes, since the state began)
    runs_counted_here: int  # by this process (agno_exporter_runs_collected_total)
    series: int
    last_error: PollFailure | None = None
    trace_backlog: int | None = None  # runs waiting for span delivery; None: traces off
    agno_spans_backlog: int | None = None  # agno's own spans waiting; None: not forwarded

    def rows(self) -> list[tuple[str, str]]:
        """(label, text) pairs, in the page's order."""
        out = [("collector", self.collector),
               ("last successful poll", self._when(self.last_success) if self.last_success else "none yet"),
               ("runs counted", f"{self.runs_counted:,} ({self.runs_counted_here:,} by this process)"),
               ("layout", self.layout),
               ("tables read", self.tables),
               ("last error", self._error())]
        if self.trace_backlog is not None:
            out.append(("trace backlog", f"{self.trace_backlog:,} runs waiting for span delivery (last pass, "
                                         "at most traces.batch_size)"))
        if self.agno_spans_backlog is not None:
            out.append(("agno spans backlog", f"{self.agno_spans_backlog:,} spans waiting to be forwarded (last pass)"))
        out.append(("database", self.database))
        if self.state is not None:
            out.append(("state", self.state))
        out.append(("series", f"{self.series:,}"))
        return out

    @property
    def failing(self) -> bool:
        """The last poll failed (the last error is newer than the last success)."""
        return self.last_error is not None and self.last_error.at >= (self.last_success or 0.0)

    def _error(self) -> str:
        e = self.last_error
        if e is None:
            return "none since start"
        return f"{self._when(e.at)}, {e.reason}: {' '.join(e.message.split())}"  # libpq's lines, on one

    def _when(self, at: float) -> str:
        stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{stamp} ({_age(self.now - at)} ago)"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {s % size // sub_size}{sub}"
    return f"{s}s"


@dataclass
class Health:
    """What /readyz and the landing page report; set by the running components."""

    ready: Callable[[], bool]
    status: Callable[[], Status]
    # (table, what is done with it): agno's tables read, and those found but not read (other schemas too)
    tables: Callable[[], Sequence[tuple[str, str]]] = field(default=lambda: ())


def build_app(registry: CollectorRegistry, health: Health, web_config: WebConfig | None = None) -> web.Application:
    middlewares = []
    if web_config is not None and web_config.users:
        middlewares.append(basic_auth_middleware(web_config.users))
    app = web.Application(middlewares=middlewares)

    async def metrics(request: web.Request) -> web.StreamResponse:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Written in chunks from the cached lines, not joined into one body first: a body of 10^4 series
        # (about 2 MB) held two or three times over during each scrape was the collect's peak RSS.
        parts = render_parts(registry, encoder)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = sum(len(p) for p in parts)
        await response.prepare(request)
        for chunk in chunks(parts):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        lines = "".join(f"{k}: {v}\n" for k, v in health.status().rows())
        if health.ready():
            return web.Response(text="ready\n" + lines)
        return web.Response(status=503, text="not ready\n" + lines)

    async def index(request: web.Request) -> web.Response:
        status = health.status()
        rows = "".join(
            f"<tr{' class=bad' if k == 'last error' and status.failing else ''}><th>{html.escape(k)}</th>"
            f"<td>{html.escape(v)}</td></tr>" for k, v in status.rows()
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>agno-exporter</title>"
            "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1.5em;"
            "vertical-align:top}td,th{padding-bottom:.3em}.bad td{color:#b00020}</style></head>"
            f"<body><h1>agno-exporter {html.escape(__version__)}</h1>"
            "<p>Prometheus metrics and OpenTelemetry spans for Agno agents, read from agno's Postgres.</p>"
            "<ul><li><a href='metrics'>/metrics</a></li><li><a href='healthz'>/healthz</a></li>"
            "<li><a href='readyz'>/readyz</a></li></ul>"
            f"<table>{rows}</table>{_tables_section(health.tables())}</body></html>"
        )
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    return app


class ListenError(Exception):
    """An HTTP server could not bind its address. ``str()`` is one line for the user: the address, why,
    and which flag or setting picks another (the command line prints it instead of a traceback)."""


_BIND_REASONS = {
    errno.EADDRINUSE: "the address is already in use (by another program, or another agno-exporter)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "this machine has no such address",
}


def listen_error(host: str, port: int, exc: OSError, change: str) -> ListenError:
    """The one-line error for a failed bind of ``host:port``; ``change`` says how to pick another address."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        why = f"cannot resolve host {host!r} ({exc.strerror})"
    else:
        why = _BIND_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return ListenError(f"cannot listen on {shown}: {why}; {change}")


LISTEN_HINT = "give another address with --listen HOST:PORT (or web.listen, AGNO_EXPORTER_LISTEN)"


def _tables_section(tables: Sequence[tuple[str, str]]) -> str:
    """Where agno's data is: the tables read, and agno tables found but not read (with why)."""
    if not tables:
        return ""
    rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{html.escape(what)}</td></tr>" for t, what in tables)
    return f"<h2>agno tables</h2><table>{rows}</table>"


async def serve(app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None) -> web.AppRunner:
    """Serve ``app`` on ``host:port``; raises :class:`ListenError` when the address cannot be bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_error(host, port, exc, LISTEN_HINT) from None
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (for listen addresses with port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("not listening")
