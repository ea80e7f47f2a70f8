"""The text stage around decoding, shared by ``Translator.translate`` and the serving engine:
texts → ``ferry.text.segment`` → sentences (all texts' sentences decoded together) → results →
``reassemble`` → one ``TranslationResult`` per text. Pure Python (no torch).

Each text is segmented on its own (``segment([text])``), so which sentences belong to which text is
known from the ``ferry.text`` contract alone (``sentences`` and ``reassemble``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ferry.text import Segmented, segment

from .options import DecodeOptions, TranslationResult, blank_result, is_blank

T = TypeVar("T")


@dataclass
class TextPlan:
    """The sentences of a batch of texts and how to put their translations back together."""

    texts: list[str]
    parts: list[Segmented]
    """One segmentation per input text (none of a blank text: it translates to ``""``)."""
    sentences: list[str]
    """Every sentence to translate, all texts flattened in order."""
    owners: list[int]
    """``owners[i]``: the input text sentence ``i`` comes from."""
    options: DecodeOptions


def split_texts(texts: Sequence[str], options: DecodeOptions) -> TextPlan:
    """Segment every text with ``options.text``."""
    texts = list(texts)
    parts = [Segmented(sentences=[]) if is_blank(text) else segment([text], options.text) for text in texts]
    sentences: list[str] = []
    owners: list[int] = []
    for i, part in enumerate(parts):
        sentences.extend(part.sentences)
        owners.extend([i] * len(part.sentences))
    return TextPlan(texts, parts, sentences, owners, options)


def merge_results(plan: TextPlan, results: Sequence[TranslationResult]) -> list[TranslationResult]:
    """One result per input text from one result per sentence (in ``plan.sentences`` order)."""
    if len(results) != len(plan.sentences):
        raise ValueError(f"expected {len(plan.sentences)} sentence results, got {len(results)}")
    out: list[TranslationResult] = []
    start = 0
    for text, part in zip(plan.texts, plan.parts):
        n = len(part.sentences)
        chunk = list(results[start : start + n])
        out.append(blank_result(plan.options) if is_blank(text) else _merge(part, chunk, plan.options))
        start += n
    return out


def _merge(part: Segmented, results: list[TranslationResult], options: DecodeOptions) -> TranslationResult:
    """A text's result: texts reassembled (the best, and the n-best list rank by rank), scores and
    token counts summed over its sentences."""
    if not results:
        empty = blank_result(options)
        empty.text = part.reassemble([])[0]
        return empty
    ranks = max(len(r.hypotheses) for r in results)
    hypotheses = [part.reassemble([_at(r.hypotheses, k, r.text) for r in results])[0] for k in range(ranks)]
    scored = options.return_scores and all(r.score is not None for r in results)
    return TranslationResult(
        text=part.reassemble([r.text for r in results])[0],
        score=sum(r.score for r in results if r.score is not None) if scored else None,
        hypotheses=hypotheses,
        scores=[sum(_at(r.scores, k, r.score or 0.0) for r in results) for k in range(ranks)] if scored else [],
        input_tokens=sum(r.input_tokens for r in results),
        output_tokens=sum(r.output_tokens for r in results),
    )


def _at(items: Sequence[T], k: int, default: T) -> T:
    """``items[k]``, or ``default`` for a sentence with a shorter n-best list."""
    return items[k] if k < len(items) else default
