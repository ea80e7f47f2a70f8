"""The one exception type the client raises: a gRPC status code and the server's message."""

from __future__ import annotations

import grpc


class FerryError(Exception):
    """A failed call. ``code`` is the ``grpc.StatusCode``; ``message`` the server's explanation
    (it names the offending field, index and limit for INVALID_ARGUMENT)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, request_id: str = "") -> None:
        self.code = code
        self.message = message
        self.request_id = request_id
        where = f" (request {request_id})" if request_id else ""
        super().__init__(f"{code.name}{where}: {message}")

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> FerryError:
        code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")

    @property
    def retryable(self) -> bool:
        """Only UNAVAILABLE is worth retrying (server draining or unreachable)."""
        return self.code == grpc.StatusCode.UNAVAILABLE


def status_code(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` for a numeric status (as carried in stream errors)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN
