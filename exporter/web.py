"""HTTP: /metrics, /healthz, /readyz and a landing page, served from the asyncio loop we already have.

/metrics speaks the Prometheus text format, and OpenMetrics (with exemplars) when the scraper asks
for it. Securing it (TLS, client certificates, basic auth with bcrypt hashes) follows the shape of
Prometheus's exporter-toolkit web config, see :mod:`exporter.webconfig`.
"""

from __future__ import annotations

import html
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from . import __version__
from .exposition import render
from .webconfig import WebConfig, basic_auth_middleware


@dataclass
class Health:
    """What /readyz and the landing page report; set by the running components."""

    ready: Callable[[], bool]
    detail: Callable[[], dict[str, str]]
    # (table, what is done with it): agno's tables read, and those found but not read (other schemas too)
    tables: Callable[[], Sequence[tuple[str, str]]] = field(default=lambda: ())


def build_app(registry: CollectorRegistry, health: Health, web_config: WebConfig | None = None) -> web.Application:
    middlewares = []
    if web_config is not None and web_config.users:
        middlewares.append(basic_auth_middleware(web_config.users))
    app = web.Application(middlewares=middlewares)

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = render(registry, encoder)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        lines = "".join(f"{k}: {v}\n" for k, v in health.detail().items())
        if health.ready():
            return web.Response(text="ready\n" + lines)
        return web.Response(status=503, text="not ready\n" + lines)

    async def index(request: web.Request) -> web.Response:
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in health.detail().items()
        )
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>agno-exporter</title></head>"
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


def _tables_section(tables: Sequence[tuple[str, str]]) -> str:
    """Where agno's data is: the tables read, and agno tables found but not read (with why)."""
    if not tables:
        return ""
    rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{html.escape(what)}</td></tr>" for t, what in tables)
    return f"<h2>agno tables</h2><table>{rows}</table>"


async def serve(app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (for listen addresses with port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("not listening")
