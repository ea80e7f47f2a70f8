"""The narrow surface the serving engine needs from a model (``Backend``), implemented by ``Translator``.

Everything outside model/ that runs a model goes through these methods and attributes only; nothing
there touches ``.model``, ``.cfg`` or ``.tokenizer``. Tests implement it with a fake or a wrapper
(``tests/fake_backend.py``) instead of patching a Translator's internals.

The decoding protocol (the one ``ferry.model.search.run_search`` uses): ``encode`` a batch of source id
rows into a ``DecoderCache`` with ``copies`` rows per source, then loop ``decode_step(next_tokens,
cache) -> (R, V) logits`` → ``searcher.step`` → ``apply_step(out, cache)`` until the searcher is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .cache import DecoderCache
from .options import TranslationResult
from .search import Hypothesis, Searcher


@dataclass(frozen=True)
class BackendInfo:
    """What clients may know about a loaded model (``ListModels``, logs)."""

    model_id: str
    version: str
    source_language: str
    target_language: str
    device: str
    """``cpu``, ``cuda:0``…"""
    dtype: str
    """Weight dtype as users name it: ``float32``, ``float16``, ``bfloat16`` or ``int8``."""


class Backend(Protocol):
    """A loaded model as the engine sees it."""

    @property
    def max_positions(self) -> int:
        """Most source tokens per text and most output tokens per sentence (EOS included)."""
        ...

    @property
    def device(self) -> torch.device: ...

    def describe(self) -> BackendInfo: ...

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Source token ids of each text, EOS appended."""
        ...

    def output_limit(self, source_tokens: int, max_length: int | None) -> int:
        """Most tokens (EOS included) one sentence may produce."""
        ...

    def encode(self, rows: Sequence[Sequence[int]], *, copies: int = 1) -> DecoderCache:
        """Encode source id rows into a decoder cache with ``copies`` rows per source (beams)."""
        ...

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Logits ``(R, V)`` for the next token of every cache row; appends the step to ``cache``."""
        ...

    def new_searcher(self, beam_size: int, *, length_penalty: float = 1.0, n_best: int = 1) -> Searcher:
        """An empty searcher for this model's special ids (greedy for beam 1)."""
        ...

    def make_result(self, nbest: list[Hypothesis], input_tokens: int, return_scores: bool) -> TranslationResult:
        """Detokenise a sentence's n-best list into a ``TranslationResult``."""
        ...
