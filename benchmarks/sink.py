"""A trace backend that accepts OTLP/HTTP spans and throws them away.

The benchmarks measure what the exporter (or the instrumented app) spends producing and sending
spans, not what a backend spends storing them; run it in a process of its own
(``python -m benchmarks.sink``, prints its URL) so its own CPU is not billed to the sender.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def serve() -> None:
    received = {"requests": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        received["requests"] += 1
        received["bytes"] += len(body)
        # An empty ExportTraceServiceResponse: full success.
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"http://127.0.0.1:{port}", flush=True)
    # Until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
