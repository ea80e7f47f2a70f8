"""The gRPC side of ``ferry.text``: wire fields → ``TextOptions``, ``source_language: "auto"`` routing, Detect.

With "auto", each text's language is detected (``ferry.text.detect``), texts are grouped by detected
language and each group goes to the model served for (detected, target); one response comes back in
input order with ``detected_language``/``detection_confidence`` on every translation. A detected language
without a model for the target is INVALID_ARGUMENT naming it and the served pairs (ListModels lists them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import grpc
from ferry.model.options import DecodeOptions, UnknownModelError
from ferry.proto.v1 import translation_pb2 as pb

from ferry.text import TextOptions, segment

from .errors import invalid

if TYPE_CHECKING:
    from .servicer import TranslationServicer

AUTO = "auto"
"""The ``source_language`` that asks for detection."""
INLINE_DETECT_TEXTS = 16
"""Detecting more texts than this runs on the servicer's helper threads, off the event loop."""


def is_auto(request: pb.TranslateRequest) -> bool:
    return request.source_language.strip().lower() == AUTO


def text_options(request: pb.TranslateRequest, language: str | None) -> TextOptions:
    """How the request's texts are split: ``format``, ``no_sentence_split`` and the source language."""
    html = request.format == pb.TEXT_FORMAT_HTML
    return TextOptions(
        split_sentences=not request.no_sentence_split, format="html" if html else "text", language=language or None
    )


def with_text_options(options: DecodeOptions, request: pb.TranslateRequest, language: str | None) -> DecodeOptions:
    return dataclasses.replace(options, text=text_options(request, language))


def _detect(texts: list[str]) -> list[list[tuple[str, float]]]:
    from ferry.text.detect import detect

    return detect(texts)


async def detect_texts(pool: Executor, texts: list[str]) -> list[list[tuple[str, float]]]:
    """Per text, candidate languages best first (on a helper thread for large batches)."""
    if len(texts) <= INLINE_DETECT_TEXTS:
        return _detect(texts)
    return await asyncio.get_running_loop().run_in_executor(pool, _detect, texts)


async def detect_response(pool: Executor, texts: list[str]) -> pb.DetectResponse:
    response = pb.DetectResponse()
    for candidates in await detect_texts(pool, texts):
        detection = response.detections.add()
        for language, confidence in candidates:
            detection.languages.add(language=language, confidence=confidence)
    return response


def _detection_input(texts: Sequence[str], request: pb.TranslateRequest) -> list[str]:
    """What the detector reads: the text itself, or an HTML text's sentences (markup left out)."""
    if request.format != pb.TEXT_FORMAT_HTML:
        return list(texts)
    return [" ".join(segment([t], TextOptions(format="html", split_sentences=False)).sentences) for t in texts]


async def translate_auto(
    servicer: TranslationServicer,
    request: pb.TranslateRequest,
    context: grpc.aio.ServicerContext,
    *,
    wait_for_queue: bool,
) -> pb.TranslateResponse:
    """Translate a ``source_language: "auto"`` request (see the module docstring)."""
    servicer._check_texts(request.texts)
    texts = list(request.texts)
    detections = await detect_texts(servicer._pool, _detection_input(texts, request))
    best = [(d[0][0], d[0][1]) if d else ("", 0.0) for d in detections]
    known = [lang for lang, _ in best if lang]
    if not known:
        raise invalid(
            "source_language is auto but no text has letters to detect a language from; "
            f"set source_language; served: {servicer.registry.served()}"
        )
    fallback = max(set(known), key=known.count)  # texts without letters go with the most common language
    groups: dict[str, list[int]] = {}
    for i, (lang, _) in enumerate(best):
        groups.setdefault(lang or fallback, []).append(i)
    plans = []
    for lang, indices in groups.items():
        try:
            model, options = servicer._validate(request, source=lang)
        except UnknownModelError:
            i = indices[0]
            raise invalid(
                f"texts[{i}] was detected as {lang!r} (confidence {best[i][1]:.2f}) and no model translates "
                f"{lang}-{request.target_language.strip().lower()}; served: {servicer.registry.served()}; "
                "set source_language, or send only texts in a served language"
            ) from None
        plans.append((model, options, indices))
    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + remaining
    handles = []
    try:
        for model, options, indices in plans:
            group = [texts[i] for i in indices]
            handles.append(await servicer._submit(model, group, options, deadline, wait_for_queue=wait_for_queue))
        results = await asyncio.gather(*(asyncio.wrap_future(h.future) for h in handles))
    except asyncio.CancelledError:
        for h in handles:
            h.cancel()
        raise
    from .servicer import to_proto

    response = pb.TranslateResponse()
    slots: list[pb.Translation | None] = [None] * len(texts)
    ids: list[str] = []
    for (model, options, indices), group_results in zip(plans, results):
        part = to_proto(model, group_results, options)
        for i, translation in zip(indices, part.translations):
            slots[i] = translation
        if model.model_id not in ids:
            ids.append(model.model_id)
            response.model_version = response.model_version or model.version
        if servicer.metrics:
            servicer.metrics.texts.labels(model.model_id).inc(len(indices))
    for i, slot in enumerate(slots):
        assert slot is not None
        out = response.translations.add()
        out.CopyFrom(slot)
        out.detected_language, out.detection_confidence = best[i][0], best[i][1]
    response.model_id = ",".join(ids)
    return response
