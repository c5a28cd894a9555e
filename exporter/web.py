"""HTTP: /metrics, /healthz, /readyz and a landing page, served from the asyncio loop we already have.

/metrics speaks the Prometheus text format, and OpenMetrics (with exemplars) when the scraper asks
for it. Securing it (TLS, client certificates, basic auth with bcrypt hashes) follows the shape of
Prometheus's exporter-toolkit web config, see :mod:`exporter.webconfig`.
"""

from __future__ import annotations

import errno
import html
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

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
            f"<table>{rows}</table></body></html>"
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
