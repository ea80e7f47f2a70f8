"""The gRPC server process: translation service, health, reflection, TLS, token auth, metrics,
signals and graceful drain.

Shutdown (SIGTERM/SIGINT or ``FerryServer.shutdown``): health turns NOT_SERVING and new calls get
UNAVAILABLE (retryable) at once, while every call accepted before runs to completion within the
drain timeout; open streams answer the batches they accepted, then end with UNAVAILABLE. Then the
gRPC server and the engines stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from ferry.proto.v1 import translation_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from .auth import bearer_token, token_matches
from .config import ServerConfig
from .metrics import Metrics
from .registry import ModelRegistry
from .service import TranslationService
from .servicer import TranslationServicer
from .wire import service_handler

if TYPE_CHECKING:
    from .web import HttpServer

log = logging.getLogger("ferry.server")
T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TranslationService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
UNAUTHENTICATED_METHODS = (f"/{HEALTH_SERVICE_NAME}/",)
"""Health probes (kubelet, load balancers) carry no token."""


def read_token_file(path: str | Path) -> str:
    """The auth token in ``path`` (surrounding whitespace and the final newline stripped)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the auth token file: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise ValueError(f"{path}: the auth token file is empty; write the token into it")
    return token


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the right ``authorization: Bearer <token>`` with UNAUTHENTICATED.

    The scheme is case-insensitive (RFC 7235). Refused calls are answered from their metadata
    alone: their bodies are never parsed. ``on_refused(method)`` counts them."""

    def __init__(self, token: str, on_refused: Callable[[str], None] | None = None) -> None:
        if not token:
            raise ValueError("the auth token is empty; pass a non-empty token or none")
        self._expected = token
        self._on_refused = on_refused

    def _accepts(self, sent: str | bytes | None) -> bool:
        token = bearer_token(sent)
        return token is not None and token_matches(token, self._expected)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(UNAUTHENTICATED_METHODS):
            return handler
        metadata = {key: value for key, value in (details.invocation_metadata or ())}
        sent = metadata.get("authorization")
        if self._accepts(sent):
            return handler
        message = (
            "missing credentials: send metadata 'authorization: Bearer <token>'"
            if sent is None
            else "invalid bearer token in 'authorization' metadata"
        )

        method = details.method.rsplit("/", 1)[-1]

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            if self._on_refused is not None:
                self._on_refused(method)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        # No request_deserializer: the refused call's body stays bytes, unparsed.
        return make(deny, response_serializer=handler.response_serializer)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"cannot read the TLS {what} {path}: {exc.strerror}") from exc


class FerryServer:
    """One grpc.aio server over a ``ModelRegistry``; create, ``start`` and ``shutdown`` it on one loop."""

    def __init__(self, registry: ModelRegistry, config: ServerConfig | None = None) -> None:
        if not len(registry):
            raise ValueError("no models to serve; pass at least one --model directory")
        self.registry = registry
        self.config = config or ServerConfig()
        self.port = 0
        self.metrics_port = 0
        self.http_port = 0
        self.http: HttpServer | None = None
        self.metrics = Metrics(registry)
        self.service = TranslationService(registry, self.config.limits, self.metrics)
        """The transport-neutral request path; the gRPC servicer and the HTTP API are thin layers over it."""
        self.servicer = TranslationServicer(self.service)
        self.health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._shutdown: asyncio.Task[bool] | None = None

    async def start(self) -> int:
        """Bind, start the engines and serve; returns the bound port."""
        cfg = self.config
        limit = cfg.limits.max_message_bytes
        server = grpc.aio.server(
            interceptors=[BearerAuthInterceptor(cfg.auth_token, self._refused)] if cfg.auth_token else None,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
                ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared one
            ],
        )
        self._server = server  # from here on, ``abandon`` releases it if ``start`` fails
        server.add_generic_rpc_handlers((service_handler(self.servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls_cert is not None and cfg.tls_key is not None:
                creds = grpc.ssl_server_credentials([(_read(cfg.tls_key, "key"), _read(cfg.tls_cert, "certificate"))])
                self.port = server.add_secure_port(address, creds)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ValueError(f"cannot listen on {address}: {exc}; is the port in use?") from exc
        self.registry.start()
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
            except OSError as exc:
                where = f"{cfg.metrics_host}:{cfg.metrics_port}"
                message = f"cannot listen for /metrics on {where}: {exc.strerror}; is the port in use?"
                raise ValueError(message) from None
        if cfg.http_port is not None:
            from .web import start_http  # Starlette and uvicorn load only when HTTP is on

            self.http = await start_http(self, cfg.host, cfg.http_port)
            self.http_port = self.http.port
        log.info("serving %s on %s:%d", self.registry.served(), cfg.host, self.port)
        return self.port

    async def abandon(self) -> None:
        """Release what a failed ``start`` acquired (listeners, engines, threads), so the process
        can exit with its one-line error and nothing else."""
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        await asyncio.get_running_loop().run_in_executor(None, self.registry.stop)
        self.metrics.close()
        self.service.close()

    def _refused(self, method: str) -> None:
        self.metrics.observe(method, "UNAUTHENTICATED", 0.0)

    def shutdown(self, drain_timeout: float | None = None) -> asyncio.Task[bool]:
        """Begin the graceful shutdown (idempotent); await the task for whether every accepted
        call finished in time."""
        if self._shutdown is None:
            grace = self.config.drain_timeout if drain_timeout is None else drain_timeout
            self._shutdown = asyncio.ensure_future(self._drain(grace))
        return self._shutdown

    async def stop_admitting(self) -> None:
        """Health NOT_SERVING, new calls UNAVAILABLE; accepted calls go on (idempotent)."""
        self.service.begin_drain()
        await self.health.enter_graceful_shutdown()

    async def _drain(self, grace: float) -> bool:
        await self.stop_admitting()
        log.info("draining: %d calls in flight, up to %.1fs", self.service.inflight, grace)
        finished = await self.service.wait_idle(grace)
        if not finished:
            log.warning("drain timeout: %d calls still in flight are cancelled", self.service.inflight)
        if self._server is not None:
            if finished:
                # Let load balancers see NOT_SERVING and move new calls elsewhere before the
                # listener closes (a call racing the close would fail with CANCELLED).
                await asyncio.sleep(min(1.0, grace))
            await self._server.stop(grace=0.5 if finished else 0)
        if self.http is not None:
            await self.http.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.registry.stop)
        self.metrics.close()
        self.service.close()
        log.info("stopped")
        return finished

    async def wait(self) -> bool:
        """Until a shutdown has completed."""
        while self._shutdown is None:
            await asyncio.sleep(0.1)
        return await self._shutdown


async def serve(
    registry: ModelRegistry,
    config: ServerConfig,
    on_ready: Callable[[FerryServer], None] | None = None,
) -> bool:
    """Run until SIGTERM or SIGINT, then drain; True when every accepted call finished."""
    server = FerryServer(registry, config)
    try:
        await server.start()
    except BaseException:
        await server.abandon()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(server)
    await stop.wait()
    log.info("signal received: shutting down")
    return await server.shutdown()


class ServerThread:
    """A ``FerryServer`` on its own event-loop thread, for tests, notebooks and benchmarks.

    >>> with ServerThread(registry, ServerConfig(port=0)) as server:     # doctest: +SKIP
    ...     TranslationClient(f"127.0.0.1:{server.port}")
    """

    def __init__(self, registry: ModelRegistry, config: ServerConfig | None = None) -> None:
        self._registry = registry
        self._config = config or ServerConfig(host="127.0.0.1", port=0)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ferry-grpc", daemon=True)
        self.server: FerryServer | None = None
        self.port = 0
        self._finished: bool | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> int:
        self._thread.start()

        async def make() -> FerryServer:
            return FerryServer(self._registry, self._config)

        self.server = self.run(make())
        self.port = self.run(self.server.start())
        return self.port

    def begin_shutdown(self, drain_timeout: float | None = None) -> None:
        """Start draining without waiting (health turns NOT_SERVING before this returns)."""
        assert self.server is not None
        server = self.server

        async def begin() -> None:
            await server.stop_admitting()
            server.shutdown(drain_timeout)

        self.run(begin())

    def stop(self, drain_timeout: float | None = None) -> bool:
        """Drain and stop the server, then its loop; True when every accepted call finished.
        Idempotent."""
        if self._finished is not None:
            return self._finished
        finished = True
        if self.server is not None:
            server = self.server

            async def stop() -> bool:
                return await server.shutdown(drain_timeout)

            finished = self.run(stop(), timeout=None)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()
        self._finished = finished
        return finished

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
