"""uvicorn on the caller's asyncio loop (the one grpc.aio serves on), bound to a socket we create,
with no signal handlers of its own: the process's SIGTERM handling stays with ``ferry.server.app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

# uvicorn logs a WARNING for each malformed HTTP request or unsupported upgrade (the client gets a 400);
# a client must not be able to fill the server's log. Its errors (a bug in the app) still show.
logging.getLogger("uvicorn.error").setLevel(logging.ERROR)


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the owner of the loop handles signals


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port); ``ValueError`` if it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}; is the port in use?") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class HttpServer:
    """Serves one ASGI app on the running loop: ``await start()`` → port, ``await stop()``."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        graceful_timeout: int = 5,
    ) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # keep the process's logging setup
            access_log=False,  # quiet by default, like the gRPC side
            server_header=False,
            timeout_graceful_shutdown=graceful_timeout,
            ssl_certfile=str(tls_cert) if tls_cert else None,  # HTTPS when gRPC has TLS
            ssl_keyfile=str(tls_key) if tls_key else None,
        )
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> int:
        """Bind and begin serving; returns the bound port."""
        self._socket = bind(self.host, self.port)
        self.port = int(self._socket.getsockname()[1])
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="ferry-http")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raise a startup failure
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stop listening, let responses in progress finish (up to the graceful timeout), close."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
