"""Language detection for ``source: "auto"`` and ``POST /detect``, through ``ferry.text.detect`` when
this install has it; otherwise a 400 that says to name the source language."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Sequence

from ferry.model.options import InvalidRequestError

INLINE_TEXTS = 16
"""Detecting more texts than this runs on a worker thread, off the event loop."""

Detector = Callable[[Sequence[str]], list[list[tuple[str, float]]]]


class DetectionUnavailableError(InvalidRequestError):
    """This server cannot detect languages (HTTP 400): the client must name the source language."""

    def __init__(self) -> None:
        super().__init__(
            "language detection is not available on this server; send source as a language code from GET /languages"
        )


def detector() -> Detector | None:
    """``ferry.text.detect.detect`` (texts → per text ``[(code, probability 0–1)]``, best first), or None."""
    try:
        module = importlib.import_module("ferry.text.detect")
    except ImportError:
        return None
    detect = getattr(module, "detect", None)
    return detect if callable(detect) else None


async def detect_languages(texts: list[str]) -> list[list[tuple[str, float]]]:
    """Per text, candidate languages best first; ``DetectionUnavailableError`` without a detector."""
    detect = detector()
    if detect is None:
        raise DetectionUnavailableError()
    if len(texts) <= INLINE_TEXTS:
        return detect(texts)
    return await asyncio.to_thread(detect, texts)
