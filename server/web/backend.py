"""``ServerBackend``: the HTTP API's view of a running ``FerryServer``. Translations go through the gRPC
servicer's own request path (limits, routing, ``"auto"`` detection, text options, option validation,
engine submission and cancellation), so both transports share one implementation of each rule."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ferry.model.options import Status, TranslationError, TranslationRequest
from ferry.proto.v1 import translation_pb2 as pb

from .. import text_routing
from ..errors import RpcFailure
from ..registry import ModelRegistry
from .api import Translation

if TYPE_CHECKING:
    from ..app import FerryServer


class _CallDeadline:
    """The part of a gRPC ``ServicerContext`` the servicer's translate path reads: the time left."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


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

    @contextmanager
    def call(self, method: str) -> Iterator[list[str]]:
        """The servicer's call accounting (in flight, drain refusal, metrics), its refusal as the
        shared error type."""
        manager = self._servicer._call(method)
        try:
            code = manager.__enter__()
        except RpcFailure as failure:
            raise _as_translation_error(failure) from None
        try:
            yield code
        except BaseException as exc:
            if not manager.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            manager.__exit__(None, None, None)

    async def translate(self, request: TranslationRequest) -> list[Translation]:
        options = request.options
        message = pb.TranslateRequest(
            texts=request.texts,
            source_language=request.source_language,
            target_language=request.target_language,
            model_id=request.model_id,
            format=pb.TEXT_FORMAT_HTML if options.text.format == "html" else pb.TEXT_FORMAT_UNSPECIFIED,
            no_sentence_split=not options.text.split_sentences,
        )
        message.options.beam_size = options.beam_size
        message.options.num_hypotheses = options.num_hypotheses
        try:
            response = await self._servicer._translate(
                message,
                _CallDeadline(request.deadline),  # duck-typed: only time_remaining() is read
                wait_for_queue=False,
            )
        except RpcFailure as failure:
            raise _as_translation_error(failure) from None
        auto = request.source_language == text_routing.AUTO
        return [
            Translation(
                text=t.text,
                alternatives=[h.text for h in t.hypotheses[1:]],
                detected=(t.detected_language, t.detection_confidence) if auto else None,
            )
            for t in response.translations
        ]

    async def detect(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        try:
            self._servicer._check_texts(texts)
        except RpcFailure as failure:
            raise _as_translation_error(failure) from None
        return await text_routing.detect_texts(self._servicer._pool, texts)


def _as_translation_error(failure: RpcFailure) -> TranslationError:
    """The servicer's gRPC-coded refusal as the shared error type, so it maps to its HTTP status."""
    error = TranslationError(failure.message)
    error.status = next((s for s in Status if s.grpc_name == failure.code.name), Status.INTERNAL)
    return error
