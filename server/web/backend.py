"""``ServerBackend``: the HTTP API's view of a running ``FerryServer``. Requests go through the server's
transport-neutral ``TranslationService`` (limits, routing, ``"auto"`` detection, text options, option
validation, engine submission and cancellation, call accounting), the same path gRPC takes; this module
only maps its results onto the HTTP API's ``Translation``."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from ferry.model.options import TranslationRequest

from ..registry import ModelRegistry
from .api import Translation

if TYPE_CHECKING:
    from ..app import FerryServer


class ServerBackend:
    def __init__(self, server: FerryServer) -> None:
        self._server = server
        self._service = server.service

    @property
    def registry(self) -> ModelRegistry:
        return self._service.registry

    @property
    def auth_token(self) -> str | None:
        return self._server.config.auth_token

    @property
    def draining(self) -> bool:
        return self._service.draining

    @property
    def max_text_chars(self) -> int:
        return self._service.limits.max_text_chars

    @property
    def max_body_bytes(self) -> int:
        return self._service.limits.max_message_bytes

    def call(self, method: str) -> AbstractContextManager[list[str]]:
        """The service's call accounting (in flight, drain refusal as ``EngineClosedError``, metrics)."""
        return self._service.call(method)

    async def translate(self, request: TranslationRequest) -> list[Translation]:
        translated = await self._service.translate(request)
        n = request.options.num_hypotheses
        return [
            Translation(
                text=r.text,
                alternatives=list(r.hypotheses[1:]) if n > 1 else [],
                detected=translated.detected[i] if translated.detected is not None else None,
            )
            for i, r in enumerate(translated.results)
        ]

    async def detect(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        return await self._service.detect(texts)
