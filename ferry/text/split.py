"""Sentence spans of plain text, and the layout (whitespace, line breaks) around them.

Sentence boundaries come from sentencex (rule-based, per-language abbreviation lists, knows decimals,
quotes and ellipses; see docs/text.md for the comparison). Everything between sentences is layout and is
kept byte for byte: ``Layout.pieces`` alternates literal text and sentence slots so that joining the
pieces with the sentences themselves gives the original text back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_LANGUAGE = "en"
"""Splitting rules used when the source language is unknown."""


def sentence_spans(text: str, language: str | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence in ``text``, surrounding whitespace excluded, in order.

    Line breaks are not treated specially here (callers split lines first when lines matter).
    """
    import sentencex

    lang = language or DEFAULT_LANGUAGE
    spans: list[tuple[int, int]] = []
    pos = 0
    for chunk in sentencex.segment(lang, text):
        start = text.find(chunk, pos)  # sentencex keeps every character; find() guards against a future change
        if start < 0:
            start = pos
        end = start + len(chunk)
        pos = end
        stripped = chunk.strip()
        if not stripped:
            continue
        lead = len(chunk) - len(chunk.lstrip())
        spans.append((start + lead, start + lead + len(stripped)))
    if not spans and text.strip():  # never lose text, whatever the splitter did
        lead = len(text) - len(text.lstrip())
        spans.append((lead, lead + len(text.strip())))
    return spans


def _strip_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span without its surrounding whitespace, or None if it is only whitespace."""
    chunk = text[start:end]
    stripped = chunk.strip()
    if not stripped:
        return None
    lead = len(chunk) - len(chunk.lstrip())
    return start + lead, start + lead + len(stripped)


def text_spans(text: str, *, split_sentences: bool = True, language: str | None = None) -> list[tuple[int, int]]:
    """Spans to translate in plain ``text``: sentences within each line, or the whole stripped text."""
    if not split_sentences:
        whole = _strip_span(text, 0, len(text))
        return [whole] if whole else []
    spans: list[tuple[int, int]] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        for start, end in sentence_spans(body, language):
            spans.append((pos + start, pos + end))
        pos += len(line)
    return spans


@dataclass(frozen=True)
class Layout:
    """A text as literal pieces around sentence slots: ``pieces[0] s0 pieces[1] s1 ... pieces[n]``."""

    pieces: tuple[str, ...]
    """``len(sentences) + 1`` literal strings (whitespace and line breaks, mostly empty or short)."""
    sentences: tuple[str, ...]
    """The sentences, in order."""

    def fill(self, translations: Sequence[str]) -> str:
        """The text with each sentence replaced by its translation, layout unchanged."""
        if len(translations) != len(self.sentences):
            raise ValueError(f"expected {len(self.sentences)} translations, got {len(translations)}")
        out = [self.pieces[0]]
        for translation, piece in zip(translations, self.pieces[1:]):
            out.append(translation)
            out.append(piece)
        return "".join(out)


def layout(text: str, spans: Sequence[tuple[int, int]]) -> Layout:
    """Cut ``text`` at ``spans`` (sorted, non-overlapping)."""
    pieces, sentences, pos = [], [], 0
    for start, end in spans:
        pieces.append(text[pos:start])
        sentences.append(text[start:end])
        pos = end
    pieces.append(text[pos:])
    return Layout(tuple(pieces), tuple(sentences))
