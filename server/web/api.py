"""The LibreTranslate-compatible HTTP API and the translation page, as one Starlette app.

Thin transport: a request body becomes ``TranslateFields`` (``fields.py``), then one shared
``TranslationRequest``, which the ``Backend`` validates and runs through the same request path,
engines, limits and metrics as gRPC. Failures map to HTTP through the shared ``status_of``; the
API's own cases are 403 (API key) and 503 (draining). Every error is JSON ``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ferry.model.options import DecodeOptions, Status, TranslationError, TranslationRequest, status_of
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ferry.text import TextOptions

from ..registry import ModelRegistry
from .fields import AUTO, AuthError, TranslateFields, check_key, read_body, text_field, translate_fields
from .languages import language_name
from .openapi import openapi_document

log = logging.getLogger("ferry.server")
T = TypeVar("T")

STATIC = Path(__file__).resolve().parent / "static"


class Backend(Protocol):
    """What the HTTP API needs from the server it runs in (``ServerBackend`` adapts ``FerryServer``)."""

    @property
    def registry(self) -> ModelRegistry: ...

    @property
    def auth_token(self) -> str | None: ...

    @property
    def draining(self) -> bool: ...

    @property
    def max_text_chars(self) -> int: ...

    @property
    def max_body_bytes(self) -> int: ...

    def call(self, method: str) -> AbstractContextManager[list[str]]:
        """Count one call in flight (the drain waits for it) and record its status name (``code[0]``)
        and latency in the metrics; raises a ``TranslationError`` (UNAVAILABLE) while draining."""
        ...

    async def translate(self, request: TranslationRequest) -> list[Translation]:
        """Validate ``request`` (limits, options, served pair; source ``"auto"`` detects each text's) and
        translate it on the engines; cancelling the awaiting task cancels the engine work. Raises the
        shared ``TranslationError`` types."""
        ...

    async def detect(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """Per text, candidate languages best first with confidences 0–1 (the request limits apply)."""
        ...


@dataclass
class Translation:
    """One text's answer: the translation, the rest of its n-best list, and with ``"auto"`` the
    detected language and the detector's confidence (0–1)."""

    text: str
    alternatives: list[str] = field(default_factory=list)
    detected: tuple[str, float] | None = None


class ClientGone(Exception):
    """The client closed the connection before the answer was ready; its work was cancelled."""


# ---------------------------------------------------------------------------------------------- app
def create_app(backend: Backend) -> Starlette:
    """The ASGI app: the API, the page at ``/`` and its files under ``/static``."""
    api = _Api(backend)
    routes = [
        Route("/", api.page, methods=["GET"]),
        Route("/translate", api.translate, methods=["POST"]),
        Route("/detect", api.detect, methods=["POST"]),
        Route("/languages", api.languages, methods=["GET", "POST"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/frontend/settings", api.settings, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) as JSON too."""
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no such endpoint: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    return error(message.get(exc.status_code, str(exc.detail)), exc.status_code, exc.headers)


def error(message: str, status: int, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def failure(request: Request, exc: Exception) -> JSONResponse:
    """The answer for a failed call: its shared status; a bug (INTERNAL) is logged with its traceback."""
    status = status_of(exc)
    if status is Status.INTERNAL:
        log.error("unexpected error while serving %s", request.url.path, exc_info=exc)
        return error(f"internal server error ({type(exc).__name__}); see the server log", 500)
    retry = status in (Status.RESOURCE_EXHAUSTED, Status.UNAVAILABLE)
    return error(str(exc), status.http_status, {"Retry-After": "1"} if retry else None)


class _Api:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # ------------------------------------------------------------------ plain GETs
    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        if self.backend.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "serving"})

    async def languages(self, request: Request) -> Response:
        return JSONResponse(languages(self.backend.registry))

    async def settings(self, request: Request) -> Response:
        """LibreTranslate's frontend settings (its web clients read ``charLimit`` and ``keyRequired``)."""
        pairs = [(m.source_language, m.target_language) for m in self.backend.registry]
        src, tgt = pairs[0] if pairs else ("", "")
        return JSONResponse(
            {
                "charLimit": self.backend.max_text_chars,
                "keyRequired": bool(self.backend.auth_token),
                "apiKeys": bool(self.backend.auth_token),
                "suggestions": False,
                "filesTranslation": False,
                "supportedFilesFormat": [],
                "language": {
                    "source": {"code": src, "name": language_name(src)},
                    "target": {"code": tgt, "name": language_name(tgt)},
                },
            }
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    # ------------------------------------------------------------------ work
    async def translate(self, request: Request) -> Response:
        return await self._serve("http_translate", request, self._translate)

    async def detect(self, request: Request) -> Response:
        return await self._serve("http_detect", request, self._detect)

    async def _serve(
        self, method: str, request: Request, work: Callable[[Request, dict[str, Any]], Awaitable[Any]]
    ) -> Response:
        """Count the call (refused during a drain), read the body, check the key, run ``work`` until
        done or the client leaves; map every failure to its status."""
        try:
            with self.backend.call(method) as code:
                try:
                    fields = await read_body(request, self.backend.max_body_bytes)
                    check_key(request, fields, self.backend.auth_token)
                    return JSONResponse(await until_disconnect(request, work(request, fields)))
                except AuthError as exc:
                    code[0] = "UNAUTHENTICATED"
                    return error(str(exc), 403)
                except (ClientGone, ClientDisconnect):  # before the answer, or in the middle of the body
                    code[0] = "CANCELLED"
                    return Response(status_code=499)  # nobody reads it
                except Exception as exc:
                    code[0] = status_of(exc).grpc_name
                    return failure(request, exc)
        except Exception as exc:  # refused before it started: draining
            return failure(request, exc)

    async def _translate(self, request: Request, raw: dict[str, Any]) -> dict[str, Any]:
        fields = translate_fields(raw)
        try:
            translations = await self.backend.translate(shared_request(fields))
        except TranslationError as exc:
            exc.args = (wire_names(str(exc), fields.batch),)
            raise
        body: dict[str, Any] = {"translatedText": pick([t.text for t in translations], fields.batch)}
        if fields.source == AUTO:
            found = [
                {"language": t.detected[0], "confidence": percent(t.detected[1])} for t in translations if t.detected
            ]
            body["detectedLanguage"] = pick(found, fields.batch)
        if fields.alternatives:
            body["alternatives"] = pick([t.alternatives[: fields.alternatives] for t in translations], fields.batch)
        return body

    async def _detect(self, request: Request, raw: dict[str, Any]) -> list[dict[str, Any]]:
        text = text_field(raw, "q")
        try:
            ranking = (await self.backend.detect([text]))[0]
        except TranslationError as exc:
            exc.args = (wire_names(str(exc), batch=False),)
            raise
        return [{"language": lang, "confidence": percent(p)} for lang, p in ranking]


# ---------------------------------------------------------------------------------------------- helpers
def shared_request(fields: TranslateFields) -> TranslationRequest:
    """The LibreTranslate fields as the shared request: ``alternatives`` widens the n-best list (and
    the beam when it must); ``format`` is the text stage's format."""
    default = DecodeOptions()
    n = fields.alternatives + 1
    options = DecodeOptions(
        beam_size=max(default.beam_size, n), num_hypotheses=n, text=TextOptions(format=fields.format)
    )
    return TranslationRequest(
        texts=fields.texts, options=options, source_language=fields.source, target_language=fields.target
    )


def pick(values: list[T], batch: bool) -> list[T] | T:
    """A list for a list ``q``, else its one item."""
    return values if batch else values[0]


_TEXTS_INDEX = re.compile(r"\btexts\[(\d+)\]")


def wire_names(message: str, batch: bool) -> str:
    """A shared error message in the API's field names: ``texts[i]`` is ``q[i]`` (``q`` for one text),
    ``source_language`` is ``source``."""
    message = _TEXTS_INDEX.sub(lambda m: f"q[{m.group(1)}]" if batch else "q", message)
    message = re.sub(r"\btexts (has|is)\b", r"q \1", message)
    return re.sub(r"\b(source|target)_language\b", r"\1", message)


def languages(registry: ModelRegistry) -> list[dict[str, Any]]:
    """LibreTranslate's ``/languages``: every language a hosted model reads or writes, with the
    languages it can be translated into, sorted by code."""
    targets: dict[str, list[str]] = {}
    for m in registry:
        targets.setdefault(m.source_language, [])
        targets.setdefault(m.target_language, [])
        if m.target_language not in targets[m.source_language]:
            targets[m.source_language].append(m.target_language)
    return [{"code": c, "name": language_name(c), "targets": sorted(t)} for c, t in sorted(targets.items())]


def percent(probability: float) -> float:
    """A 0–1 detection probability as LibreTranslate's 0–100 confidence."""
    return round(100.0 * min(max(probability, 0.0), 1.0), 2)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelling it (and with it the engine work) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()
