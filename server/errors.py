"""Mapping failures to gRPC status codes; the servicer's single place for it."""

from __future__ import annotations

import logging

import grpc
from ferry.model.options import Status, TranslationError, status_of

log = logging.getLogger("ferry.server")


class RpcFailure(Exception):
    """A request that fails with ``code``; ``message`` says what was wrong, the limit and what to do."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, message)


def unavailable(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.UNAVAILABLE, message)


def to_failure(exc: BaseException) -> RpcFailure:
    """The status for an exception raised by the registry or the engine (``status_of``, shared with
    HTTP). Unexpected exceptions become INTERNAL (logged with their traceback); the server keeps running."""
    if isinstance(exc, RpcFailure):
        return exc
    status = status_of(exc)
    if status is not Status.INTERNAL:
        return RpcFailure(getattr(grpc.StatusCode, status.grpc_name), str(exc))
    if isinstance(exc, TranslationError):
        log.warning("translation failed: %s", exc)
        return RpcFailure(grpc.StatusCode.INTERNAL, str(exc))
    log.error("unexpected error while serving a request", exc_info=exc)
    return RpcFailure(grpc.StatusCode.INTERNAL, f"internal server error ({type(exc).__name__}); see the server log")
