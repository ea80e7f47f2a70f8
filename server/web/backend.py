"""``ServerBackend``: the HTTP API's view of a running ``FerryServer`` — its registry, limits, auth
token, drain state, in-flight accounting and metrics, and the gRPC servicer's translate path."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from ferry.model.options import Status, TranslationError, TranslationRequest, TranslationResult
from ferry.proto.v1 import translation_pb2 as pb

from ..errors import RpcFailure
from ..registry import ModelRegistry

if TYPE_CHECKING:
    from ..app import FerryServer


class ServerBackend:
    def __init__(self, server: FerryServer) -> None:
        self._server = server
        self._servicer = server.servicer

    @property
    def registry(self) -> ModelRegistry:
        return self._server.registry

    @property
    def auth_token(self) -> str | None:
        return self._server.config.auth_token

    @property
    def draining(self) -> bool:
        return self._servicer.draining

    @property
    def max_text_chars(self) -> int:
        return self._servicer.limits.max_text_chars

    @property
    def max_body_bytes(self) -> int:
        return self._servicer.limits.max_message_bytes

    def call(self, method: str) -> AbstractContextManager[list[str]]:
        return self._servicer._call(method)

    async def translate(self, request: TranslationRequest) -> list[TranslationResult]:
        servicer = self._servicer
        message = pb.TranslateRequest(
            texts=request.texts,
            source_language=request.source_language,
            target_language=request.target_language,
            model_id=request.model_id,
        )
        try:
            model, _ = servicer._validate(message)  # limits and the served pair, as for gRPC
        except RpcFailure as failure:
            raise _as_translation_error(failure) from None
        options = request.options
        options.validate(model.max_length)
        handle = await servicer._submit(model, list(request.texts), options, request.deadline, wait_for_queue=False)
        try:
            return await asyncio.wrap_future(handle.future)
        except asyncio.CancelledError:
            handle.cancel()  # the client went away: free the batch rows
            raise


def _as_translation_error(failure: RpcFailure) -> TranslationError:
    """The servicer's gRPC-coded refusal as the shared error type, so it maps to its HTTP status."""
    error = TranslationError(failure.message)
    error.status = next((s for s in Status if s.grpc_name == failure.code.name), Status.INTERNAL)
    return error
