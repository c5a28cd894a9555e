"""A small, real OTLP/HTTP trace receiver for tests.

It listens on 127.0.0.1 (ephemeral port), accepts ``POST /v1/traces`` with
``application/x-protobuf`` (optionally gzip/deflate encoded: aiohttp's server decodes the body as its
``Content-Encoding`` says, and the header is kept with the request), decodes the
``ExportTraceServiceRequest`` with opentelemetry-proto and keeps the spans. It can be told to
answer an error status (503, 500, ...) or to be down (its listening socket closed, so connections
are refused), to play a broken trace backend. Spans of a request answered with an error are not
kept, as a real backend would not have stored them.

Use it from sync tests (``with OtlpReceiver() as rx:`` runs its own event loop in a thread) or
from async code (``await rx.astart()`` / ``await rx.astop()`` on the caller's loop).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PROTOBUF = "application/x-protobuf"


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value (arrays as lists)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received, with the resource and scope it came with."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id)
    resource: dict[str, Any]
    scope: str

    @classmethod
    def from_proto(cls, span: Span, resource: dict[str, Any], scope: str) -> ReceivedSpan:
        return cls(
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            name=span.name,
            kind=span.kind,
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            attributes={kv.key: any_value(kv.value) for kv in span.attributes},
            status_code=span.status.code,
            status_message=span.status.message,
            links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
            resource=resource,
            scope=scope,
        )


class OtlpReceiver:
    """See the module docstring. ``status`` is the HTTP status answered to every export (200 = ok)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._requests: list[tuple[int, int, dict[str, str]]] = []  # (status, span count, headers)
        self.status = 200
        # Optional per-request verdict: return a status to answer instead of 200 (e.g. 400).
        self.reject: Callable[[list[ReceivedSpan]], int | None] | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- what was received -------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def requests(self) -> list[tuple[int, int, dict[str, str]]]:
        """(answered status, spans in the request, request headers) per request, in order."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._requests.clear()

    def wait_for_spans(self, count: int, timeout: float = 60.0) -> list[ReceivedSpan]:
        """Block until at least ``count`` spans were accepted (sync tests only)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._spans) >= count, timeout):
                raise TimeoutError(f"received {len(self._spans)} spans, expected {count}")
            return list(self._spans)

    # ---- the HTTP side -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        body = await request.read()  # decoded already (aiohttp's auto_decompress): gzip, deflate
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(body)
        except DecodeError:
            return web.Response(status=400, text="bad protobuf")
        received: list[ReceivedSpan] = []
        for rs in message.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                received.extend(ReceivedSpan.from_proto(s, resource, ss.scope.name) for s in ss.spans)
        status = self.status
        if status == 200 and self.reject is not None:
            status = self.reject(received) or 200
        with self._lock:
            self._requests.append((status, len(received), dict(request.headers)))
            if status == 200:
                self._spans.extend(received)
            self._lock.notify_all()
        if status != 200:
            return web.Response(status=status, text="refused by the test receiver")
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)

    async def astart(self) -> OtlpReceiver:
        """Start listening on the running loop (async use); after :meth:`adown`, on the same port."""
        app = web.Application()
        app.router.add_post("/v1/traces", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        # Our own socket: port 0 picks a free port the first time, the same port after adown().
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self.port = sock.getsockname()[1]
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        return self

    async def adown(self) -> None:
        """Go down like a crashed backend: open connections are closed, new ones refused."""
        await self.astop()

    async def aup(self) -> None:
        """Come back on the same port."""
        if self._runner is None:
            await self.astart()

    async def astop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ---- sync use: the receiver's own loop in a thread -----------------------------------------

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "receiver not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def start(self) -> OtlpReceiver:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        self._call(self.astart())
        return self

    def down(self) -> None:
        self._call(self.adown())

    def up(self) -> None:
        self._call(self.aup())

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self.astop())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = None
            self._thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
