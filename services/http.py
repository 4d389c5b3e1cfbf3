"""Serving a service's HTTP API: the auth service's and the gateway's, the same way."""

from __future__ import annotations

from aiohttp import web

from bus.tls import TlsFiles, server_context

__all__ = ["serve"]


async def serve(app: web.Application, host: str, port: int, tls: TlsFiles | None) -> web.AppRunner:
    """Serve ``app`` on ``host:port``, over HTTPS with ``tls`` (plain HTTP without: for
    loopback only); the runner, for ``cleanup()`` on stop."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = None if tls is None else server_context(tls)
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    return runner
