"""HTTP for ``ferry serve``: a LibreTranslate-compatible JSON API and a translation page, served by
uvicorn on the same asyncio loop as grpc.aio, over the same engines, limits, auth and metrics.

- ``create_app(backend)``: the Starlette app (``api.py``); ``ServerBackend(server)`` adapts a ``FerryServer``.
- ``HttpServer(app, host, port)``: uvicorn on the running loop, without its own signal handling.
- ``start_http(server, host, port)``: both, for ``FerryServer.start``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .api import Backend, create_app
from .backend import ServerBackend
from .server import HttpServer

if TYPE_CHECKING:
    from ..app import FerryServer

__all__ = ["Backend", "HttpServer", "ServerBackend", "create_app", "start_http"]


async def start_http(server: FerryServer, host: str, port: int) -> HttpServer:
    """Serve ``server``'s HTTP API on ``host:port`` (0: any free port) from the running loop; HTTPS
    with the gRPC port's certificate when it has one."""
    cfg = server.config
    http = HttpServer(create_app(ServerBackend(server)), host, port, tls_cert=cfg.tls_cert, tls_key=cfg.tls_key)
    await http.start()
    return http
