"""``source_language: "auto"`` routing and language detection, for every transport (``TranslationService``).

With "auto", each text's language is detected (``ferry.text.detect``), texts are grouped by detected
language and each group goes to the model served for (detected, target); one answer comes back in
input order with the detected language and its confidence for every text. A detected language without
a model for the target is ``InvalidRequestError`` naming it and the served pairs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from ferry.model.options import InvalidRequestError, TranslationRequest, TranslationResult, UnknownModelError

from ferry.text import TextOptions, segment

if TYPE_CHECKING:
    from .service import Translated, TranslationService

AUTO = "auto"
"""The ``source_language`` that asks for detection."""
INLINE_DETECT_TEXTS = 16
"""Detecting more texts than this runs on the service's helper threads, off the event loop."""


def is_auto(source_language: str) -> bool:
    return source_language.strip().lower() == AUTO


def _detect(texts: list[str]) -> list[list[tuple[str, float]]]:
    from ferry.text.detect import detect

    return detect(texts)


async def detect_texts(pool: Executor, texts: list[str]) -> list[list[tuple[str, float]]]:
    """Per text, candidate languages best first (on a helper thread for large batches)."""
    if len(texts) <= INLINE_DETECT_TEXTS:
        return _detect(texts)
    return await asyncio.get_running_loop().run_in_executor(pool, _detect, texts)


def _detection_input(texts: Sequence[str], options: TextOptions) -> list[str]:
    """What the detector reads: the text itself, or an HTML text's sentences (markup left out)."""
    if options.format != "html":
        return list(texts)
    return [" ".join(segment([t], TextOptions(format="html", split_sentences=False)).sentences) for t in texts]


async def translate_auto(
    service: TranslationService, request: TranslationRequest, *, wait_for_queue: bool
) -> Translated:
    """Translate a ``source_language: "auto"`` request (see the module docstring)."""
    from .service import Translated

    service.check_texts(request.texts)
    texts = list(request.texts)
    detections = await detect_texts(service.pool, _detection_input(texts, request.options.text))
    best = [(d[0][0], d[0][1]) if d else ("", 0.0) for d in detections]
    known = [lang for lang, _ in best if lang]
    if not known:
        raise InvalidRequestError(
            "source_language is auto but no text has letters to detect a language from; "
            f"set source_language; served: {service.registry.served()}"
        )
    fallback = max(set(known), key=known.count)  # texts without letters go with the most common language
    groups: dict[str, list[int]] = {}
    for i, (lang, _) in enumerate(best):
        groups.setdefault(lang or fallback, []).append(i)
    plans = []
    for lang, indices in groups.items():
        try:
            model, options = service.validate(request, source=lang)
        except UnknownModelError:
            i = indices[0]
            raise InvalidRequestError(
                f"texts[{i}] was detected as {lang!r} (confidence {best[i][1]:.2f}) and no model translates "
                f"{lang}-{request.target_language.strip().lower()}; served: {service.registry.served()}; "
                "set source_language, or send only texts in a served language"
            ) from None
        plans.append((model, options, indices))
    handles = []
    try:
        for model, options, indices in plans:
            group = [texts[i] for i in indices]
            handles.append(await service.submit(model, group, options, request.deadline, wait_for_queue=wait_for_queue))
    except asyncio.CancelledError:
        for h in handles:
            h.cancel()
        raise
    results = await service.results(*handles)
    slots: list[TranslationResult | None] = [None] * len(texts)
    ids: list[str] = []
    version = ""
    position = 0
    for model, _, indices in plans:
        for i in indices:
            slots[i] = results[position]
            position += 1
        if model.model_id not in ids:
            ids.append(model.model_id)
            version = version or model.version
        if service.metrics:
            service.metrics.texts.labels(model.model_id).inc(len(indices))
    ordered = [r for r in slots if r is not None]
    assert len(ordered) == len(texts)
    return Translated(ordered, ",".join(ids), version, detected=best)
