"""Backends for engine tests: ``HookedBackend`` wraps a real one (a ``Translator``) and lets a test fail,
count or hold ``encode``/``decode_step`` calls, injected through ``Engine(backend)`` instead of patching a
Translator's internals."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from ferry.model.backend import Backend, BackendInfo
from ferry.model.cache import DecoderCache
from ferry.model.options import TranslationResult
from ferry.model.search import Hypothesis, Searcher


class HookedBackend:
    """Delegates every ``Backend`` call to ``inner``; ``on_encode(rows)`` and ``on_step(tokens, cache)``
    run first (they may raise, block or record)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.on_encode: Callable[[Sequence[Sequence[int]]], None] | None = None
        self.on_step: Callable[[torch.Tensor, DecoderCache], None] | None = None

    @property
    def max_positions(self) -> int:
        return self.inner.max_positions

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def describe(self) -> BackendInfo:
        return self.inner.describe()

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.inner.tokenize(texts)

    def output_limit(self, source_tokens: int, max_length: int | None) -> int:
        return self.inner.output_limit(source_tokens, max_length)

    def encode(self, rows: Sequence[Sequence[int]], *, copies: int = 1) -> DecoderCache:
        if self.on_encode is not None:
            self.on_encode(rows)
        return self.inner.encode(rows, copies=copies)

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        if self.on_step is not None:
            self.on_step(tokens, cache)
        return self.inner.decode_step(tokens, cache)

    def new_searcher(self, beam_size: int, *, length_penalty: float = 1.0, n_best: int = 1) -> Searcher:
        return self.inner.new_searcher(beam_size, length_penalty=length_penalty, n_best=n_best)

    def make_result(self, nbest: list[Hypothesis], input_tokens: int, return_scores: bool) -> TranslationResult:
        return self.inner.make_result(nbest, input_tokens, return_scores)
