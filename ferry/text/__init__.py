"""The text stage between a transport and the engine: source texts → sentences → translations → texts.

``segment(texts, options)`` turns request texts into the sentences the engine translates (all texts'
sentences in one flat list, so they batch together) and returns an object whose ``reassemble`` puts the
translated sentences back into one output text per input text, with the original layout. Shared by
``ferry translate``, gRPC and HTTP. Pure Python: no torch, no model.

Contract (keep it stable; callers depend on exactly this):
- ``TextOptions``: how texts are split (``split_sentences``) and their format (``"text"`` or ``"html"``).
- ``segment(texts, options) -> Segmented``; ``Segmented.sentences: list[str]``;
  ``Segmented.reassemble(translations: Sequence[str]) -> list[str]`` (one translation per sentence, in
  order; returns one text per input text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

TextFormat = Literal["text", "html"]


@dataclass(frozen=True)
class TextOptions:
    """How request texts become sentences."""

    split_sentences: bool = True
    """Split each text into sentences (and keep its whitespace and line breaks) before translating."""
    format: TextFormat = "text"
    """``text``: plain text; ``html``: translate text nodes, keep the markup."""


@dataclass
class Segmented:
    """Sentences of a batch of texts and how to rebuild the texts from their translations."""

    sentences: list[str]
    """Every sentence to translate, all texts flattened in order."""
    counts: list[int] = field(default_factory=list)
    """Sentences per input text (``sum(counts) == len(sentences)``)."""

    def reassemble(self, translations: Sequence[str]) -> list[str]:
        """One output text per input text from one translation per sentence."""
        if len(translations) != len(self.sentences):
            raise ValueError(f"expected {len(self.sentences)} translations, got {len(translations)}")
        out, start = [], 0
        for n in self.counts:
            out.append(" ".join(translations[start : start + n]))
            start += n
        return out


def segment(texts: Sequence[str], options: TextOptions = TextOptions()) -> Segmented:
    """Sentences to translate for ``texts`` (placeholder: one sentence per text until splitting lands)."""
    return Segmented(sentences=list(texts), counts=[1] * len(texts))
