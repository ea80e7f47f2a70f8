"""A ``grpc.health.v1`` probe with grpc_health_probe's exit codes."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .channel import open_channel


class ProbeResult(IntEnum):
    """Exit codes, as grpc_health_probe uses them."""

    SERVING = 0
    INVALID_ARGUMENTS = 1
    CONNECTION_FAILURE = 2
    RPC_FAILURE = 3
    NOT_SERVING = 4


def probe(
    target: str | Sequence[str],
    service: str = "",
    *,
    connect_timeout: float = 2.0,
    rpc_timeout: float = 2.0,
    tls: bool = False,
    ca_cert: str | Path | bytes | None = None,
    server_name: str | None = None,
    token: str | None = None,
) -> tuple[ProbeResult, str]:
    """Check one service's health (``""`` = the whole server); returns the result and a message."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        channel = open_channel(target, tls=tls, ca_cert=ca_cert, server_name=server_name)
    except (ValueError, OSError) as exc:
        return ProbeResult.INVALID_ARGUMENTS, str(exc)
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            return ProbeResult.CONNECTION_FAILURE, f"timeout: failed to connect to {target} within {connect_timeout}s"
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=rpc_timeout, metadata=metadata)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            kind = ProbeResult.CONNECTION_FAILURE if code == grpc.StatusCode.UNAVAILABLE else ProbeResult.RPC_FAILURE
            return kind, f"health rpc failed: {code.name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return ProbeResult.SERVING, f"status: {status}"
    return ProbeResult.NOT_SERVING, f"service unhealthy (responded with {status!r})"
