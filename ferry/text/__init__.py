"""The text stage between a transport and the engine: source texts → sentences → translations → texts.

``segment(texts, options)`` turns request texts into the sentences the engine translates (all texts'
sentences in one flat list, so they batch together) and returns an object whose ``reassemble`` puts the
translated sentences back into one output text per input text, with the original layout. Shared by
``ferry translate``, gRPC and HTTP. Pure Python: no torch, no model.

Contract (keep it stable; callers depend on exactly this):
- ``TextOptions``: how texts are split (``split_sentences``), their format (``"text"`` or ``"html"``) and
  the source language whose splitting rules apply (``language``, optional).
- ``segment(texts, options) -> Segmented``; ``Segmented.sentences: list[str]``;
  ``Segmented.reassemble(translations: Sequence[str]) -> list[str]`` (one translation per sentence, in
  order; returns one text per input text).

Modules: ``split`` (sentence spans and layout), ``markup`` (HTML tokens and runs), ``document`` (an HTML
text's sentences and rebuild), ``align`` (where inline tags go in a translation), ``detect`` (language
detection). See docs/text.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

TextFormat = Literal["text", "html"]
FORMATS: tuple[TextFormat, ...] = ("text", "html")


@dataclass(frozen=True)
class TextOptions:
    """How request texts become sentences."""

    split_sentences: bool = True
    """Split each text into sentences (and keep its whitespace and line breaks) before translating."""
    format: TextFormat = "text"
    """``text``: plain text; ``html``: translate text nodes, keep the markup."""
    language: str | None = None
    """Source language code for the splitter's rules (abbreviations such as "z. B."); None: English rules."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format={self.format!r} is not supported; use one of {', '.join(FORMATS)}")


Rebuild = Callable[[Sequence[str]], str]


@dataclass
class Segmented:
    """Sentences of a batch of texts and how to rebuild the texts from their translations."""

    sentences: list[str]
    """Every sentence to translate, all texts flattened in order."""
    counts: list[int] = field(default_factory=list)
    """Sentences per input text (``sum(counts) == len(sentences)``)."""
    rebuilders: list[Rebuild] = field(default_factory=list)
    """Per input text: its translated sentences → its output text (default: sentences joined by spaces)."""

    def reassemble(self, translations: Sequence[str]) -> list[str]:
        """One output text per input text from one translation per sentence."""
        if len(translations) != len(self.sentences):
            raise ValueError(f"expected {len(self.sentences)} translations, got {len(translations)}")
        out, start = [], 0
        for i, n in enumerate(self.counts):
            chunk = translations[start : start + n]
            out.append(self.rebuilders[i](chunk) if i < len(self.rebuilders) else " ".join(chunk))
            start += n
        return out


def _plain(text: str, options: TextOptions) -> tuple[list[str], Rebuild]:
    from ferry.text.split import layout, text_spans

    shape = layout(text, text_spans(text, split_sentences=options.split_sentences, language=options.language))
    return list(shape.sentences), shape.fill


def _html(text: str, options: TextOptions) -> tuple[list[str], Rebuild]:
    from ferry.text.document import Document

    doc = Document(text, split_sentences=options.split_sentences, language=options.language)
    n = len(doc.sentences)
    return [*doc.sentences, *doc.hints], lambda tr: doc.rebuild(tr[:n], tr[n:])


def segment(texts: Sequence[str], options: TextOptions = TextOptions()) -> Segmented:
    """Sentences to translate for ``texts`` and how to put their translations back.

    Plain text: sentences within each line (or the whole text with ``split_sentences=False``); whitespace,
    line breaks and blank lines around them are kept. Whitespace-only texts give no sentences and come back
    unchanged. HTML: the text of each block is split the same way; inline tags are re-placed in the
    translation; the list also holds the text of inline elements (translated so their place can be found).
    Raises ValueError for HTML the parser cannot read.
    """
    one = _html if options.format == "html" else _plain
    result = Segmented(sentences=[])
    for text in texts:
        sentences, rebuild = one(text, options)
        result.sentences.extend(sentences)
        result.counts.append(len(sentences))
        result.rebuilders.append(rebuild)
    return result
