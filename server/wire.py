"""The TranslationService's gRPC method handlers, with request bodies parsed here rather than by gRPC.

gRPC hands each handler the raw bytes; the auth interceptor has already checked the call's metadata,
so nothing an unauthenticated caller sends is parsed. A body that is not a valid message gets
INVALID_ARGUMENT with a short message (on a stream the call ends at once), is counted in
``ferry_undecodable_messages_total`` and ``ferry_requests_total``, and is logged as at most one
WARNING per minute, not gRPC's UNKNOWN with a traceback per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from ferry.proto.v1 import translation_pb2 as pb
from google.protobuf.message import Message

from .errors import RpcFailure, invalid
from .servicer import TranslationServicer

log = logging.getLogger("ferry.server")
M = TypeVar("M", bound=Message)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TranslationService"].full_name
UNDECODABLE_REPORT_INTERVAL_S = 60.0


class UndecodableReports:
    """Logs undecodable bodies as at most one WARNING per ``interval`` seconds (with how many were
    refused since the previous one); the others at DEBUG."""

    def __init__(self, interval: float = UNDECODABLE_REPORT_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._next_warning = float("-inf")
        self._unreported = 0

    def report(self, method: str, detail: str) -> None:
        self._unreported += 1
        now = self.clock()
        if now < self._next_warning:
            log.debug("undecodable %s request refused: %s", method, detail)
            return
        log.warning(
            "refused %d undecodable request message(s) with INVALID_ARGUMENT (latest: %s: %s); "
            "a client sends bytes that are not ferry.v1 messages; next report in %.0fs at the earliest",
            self._unreported,
            method,
            detail,
            self.interval,
        )
        self._unreported = 0
        self._next_warning = now + self.interval


class _Parser:
    def __init__(self, servicer: TranslationServicer) -> None:
        self.servicer = servicer
        self.reports = UndecodableReports()

    def __call__(self, method: str, message_type: type[M], raw: bytes) -> M:
        """``raw`` as a ``message_type``, or an INVALID_ARGUMENT ``RpcFailure``."""
        try:
            return message_type.FromString(raw)
        except Exception as exc:  # DecodeError, or anything else the parser raises on hostile bytes
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
        self.reports.report(method, detail)
        if self.servicer.metrics:
            self.servicer.metrics.undecodable.labels(method).inc()
        name = message_type.DESCRIPTOR.full_name
        raise invalid(
            f"the request message ({len(raw)} bytes) is not a valid {name}; "
            "send messages built from the ferry.v1 protos"
        )


def service_handler(servicer: TranslationServicer) -> grpc.GenericRpcHandler:
    """``TranslationService`` over ``servicer``, parsing request bodies itself."""
    parse = _Parser(servicer)

    async def refuse(method: str, failure: RpcFailure, context: grpc.aio.ServicerContext) -> None:
        if servicer.metrics:
            servicer.metrics.observe(method, failure.code.name, 0.0)
        await context.abort(failure.code, failure.message)

    def unary(method: str, message_type: type[M], handle: Callable[[M, Any], Awaitable[Any]]) -> grpc.RpcMethodHandler:
        """A unary method whose body is parsed (after auth, by the interceptor) into ``message_type``."""

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = parse(method, message_type, raw)
            except RpcFailure as failure:
                await refuse(method, failure, context)
                raise
            return await handle(request, context)

        return grpc.unary_unary_rpc_method_handler(call, response_serializer=lambda m: m.SerializeToString())

    async def translate_stream(raw_messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        async def messages() -> AsyncIterator[pb.TranslateRequest]:
            async for raw in raw_messages:
                yield parse("TranslateStream", pb.TranslateRequest, raw)  # a failure ends the call

        responses = servicer.TranslateStream(messages(), context)
        try:
            async for response in responses:
                try:
                    # Returns once gRPC has taken the message (the client's flow-control window
                    # permitting): the stream's flow control counts a response as sent from here.
                    await context.write(response)
                except Exception as exc:
                    if type(exc).__name__ != "ExecuteBatchError":
                        raise
                    # The call ended under the write (client cancelled, deadline passed): a cancel,
                    # which gRPC logs at DEBUG, not the ERROR with a traceback it logs for this.
                    raise asyncio.CancelledError from None
        finally:
            if isinstance(responses, AsyncGenerator):
                await responses.aclose()

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Translate": unary("Translate", pb.TranslateRequest, servicer.Translate),
            "TranslateStream": grpc.stream_stream_rpc_method_handler(
                translate_stream, response_serializer=pb.TranslateStreamResponse.SerializeToString
            ),
            "ListModels": unary("ListModels", pb.ListModelsRequest, servicer.ListModels),
            "Detect": unary("Detect", pb.DetectRequest, servicer.Detect),
        },
    )
