"""The inference facade, in the style of CTranslate2's ``Translator``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from .cache import DecoderCache
from .checkpoint import CheckpointInfo
from .loading import load_model
from .options import (
    MAX_BEAM_SIZE,
    MAX_LENGTH_EXTRA,
    MAX_LENGTH_RATIO,
    TranslationResult,
    check_range,
)
from .search import Hypothesis, Searcher, make_searcher, run_search
from .tokenizer import Tokenizer
from .transformer import Transformer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INT8 = "int8"
"""Weights-only dtype name: dynamic int8 quantization of the Linear layers (CPU only)."""


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={str(device)!r} is not supported; use 'cpu', 'cuda' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is available; use device='cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(device)!r} is not supported; use 'cpu', 'cuda' or 'auto'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == INT8:
        if dtype == INT8 and device.type != "cpu":
            raise ValueError("dtype='int8' is CPU only; on a GPU use float16 or bfloat16")
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; allowed: {sorted([*DTYPES, INT8])}")
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype={dtype} is not supported; allowed: {sorted(DTYPES)}")
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"dtype={dtype} needs a GPU; on CPU use float32 or int8")
    return dtype


class Translator:
    """Loads a model directory (ferry checkpoint or Hugging Face Marian/OPUS-MT directory) and
    translates batches of sentences. ``dtype``: float32 (default), float16/bfloat16 (GPU) or int8 (CPU).

    >>> t = Translator("models/en-de", device="cpu")        # doctest: +SKIP
    >>> t.translate_batch(["A man is riding a bicycle."])[0].text  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "auto",
        *,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.quantized = dtype == INT8
        """True when Linear weights are int8 (``dtype="int8"``); ``self.dtype`` is then the float32
        of activations and embeddings."""
        weights: torch.dtype | Literal["int8"] = "int8" if self.quantized else self.dtype
        model, tokenizer, info = load_model(self.path, device=self.device, dtype=weights)
        self.model: Transformer = model
        self.tokenizer: Tokenizer = tokenizer
        self.info: CheckpointInfo = info

    @classmethod
    def from_parts(cls, model: Transformer, tokenizer: Tokenizer, info: CheckpointInfo | None = None) -> Translator:
        """Wrap an in-memory model (training, tests) without a checkpoint directory."""
        self = cls.__new__(cls)
        self.path = Path(".")
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.quantized = False
        self.model, self.tokenizer, self.info = model.eval(), tokenizer, info or CheckpointInfo()
        return self

    # ------------------------------------------------------------------ helpers shared with the server
    @property
    def max_input_tokens(self) -> int:
        return self.model.cfg.max_positions

    def output_limit(self, source_tokens: int, max_length: int | None) -> int:
        """Most tokens (EOS included) one sentence may produce."""
        limit = int(MAX_LENGTH_RATIO * source_tokens + MAX_LENGTH_EXTRA)
        if max_length is not None:
            limit = min(limit, max_length)
        return max(1, min(limit, self.model.cfg.max_positions))

    def encode_ids(self, rows: Sequence[Sequence[int]], *, copies: int = 1) -> DecoderCache:
        """Encode source id rows and return a decoder cache with ``copies`` rows per source
        (beams). Cross-attention K/V are computed once per source, then duplicated."""
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        src = torch.full((len(rows), int(lengths.max())), self.model.cfg.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            src[i, : len(r)] = torch.tensor(r, dtype=torch.long)  # (B, S) padded
        enc = self.model.encode(src.to(self.device), lengths.to(self.device))
        cache = self.model.init_cache(enc, capacity=16)
        if copies > 1:
            cache.select_rows(torch.arange(len(rows), device=self.device).repeat_interleave(copies))
        return cache

    def new_searcher(self, beam_size: int, *, length_penalty: float = 1.0, n_best: int = 1) -> Searcher:
        """An empty searcher for this model's special ids (greedy for beam 1)."""
        cfg = self.model.cfg
        return make_searcher(
            beam_size,
            eos_id=cfg.eos_id,
            start_id=cfg.decoder_start_id,
            banned_ids=self.banned_ids(),
            length_penalty=length_penalty,
            n_best=n_best,
            device=self.device,
        )

    def banned_ids(self) -> list[int]:
        cfg = self.model.cfg
        return [cfg.pad_id, cfg.bos_id, cfg.decoder_start_id]

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def translate_batch(
        self,
        texts: Sequence[str],
        *,
        beam_size: int = 4,
        max_length: int | None = None,
        length_penalty: float = 1.0,
        num_hypotheses: int = 1,
        return_scores: bool = False,
        max_batch_size: int = 64,
    ) -> list[TranslationResult]:
        """Translate ``texts``; results keep input order. Inputs are sorted by length internally
        and decoded in sub-batches of at most ``max_batch_size`` sentences."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not a single string")
        check_range("beam_size", beam_size, 1, MAX_BEAM_SIZE)
        if max_length is not None:
            check_range("max_length", max_length, 1, self.model.cfg.max_positions)
        check_range("length_penalty", length_penalty, 0.0, 10.0)
        check_range("num_hypotheses", num_hypotheses, 1, beam_size)
        check_range("max_batch_size", max_batch_size, 1, 1 << 20)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] is {type(t).__name__}, expected str")
        if not texts:
            return []

        results: list[TranslationResult | None] = [None] * len(texts)
        ids = self.tokenizer.encode_source(texts)
        todo = []
        for i, text in enumerate(texts):
            if not text.strip():
                results[i] = TranslationResult(text="", score=0.0 if return_scores else None, input_tokens=0)
            else:
                todo.append(i)
        limit = self.max_input_tokens
        for i in todo:  # keep the final EOS when truncating over-long inputs
            if len(ids[i]) > limit:
                ids[i] = [*ids[i][: limit - 1], ids[i][-1]]
        todo.sort(key=lambda i: len(ids[i]), reverse=True)
        for start in range(0, len(todo), max_batch_size):
            chunk = todo[start : start + max_batch_size]
            hyps = self._search([ids[i] for i in chunk], beam_size, max_length, length_penalty, num_hypotheses)
            for i, nbest in zip(chunk, hyps):
                results[i] = self.make_result(nbest, len(ids[i]), return_scores)
        return [r for r in results if r is not None]

    def _search(
        self,
        rows: list[list[int]],
        beam_size: int,
        max_length: int | None,
        length_penalty: float,
        n_best: int,
    ) -> list[list[Hypothesis]]:
        searcher = self.new_searcher(beam_size, length_penalty=length_penalty, n_best=n_best)
        cache = self.encode_ids(rows, copies=searcher.rows_per_seq)
        limits = [self.output_limit(len(r), max_length) for r in rows]
        found = run_search(self.model, cache, searcher, list(range(len(rows))), limits)
        return [found[i] for i in range(len(rows))]

    def make_result(self, nbest: list[Hypothesis], input_tokens: int, return_scores: bool) -> TranslationResult:
        """Detokenise a sentence's n-best list into a ``TranslationResult``."""
        texts = [self.tokenizer.decode_target(h.tokens) for h in nbest]
        best = nbest[0]
        return TranslationResult(
            text=texts[0],
            score=best.score if return_scores else None,
            hypotheses=texts,
            scores=[h.score for h in nbest] if return_scores else [],
            input_tokens=input_tokens,
            output_tokens=len(best.tokens),
        )
