"""The inference facade, in the style of CTranslate2's ``Translator``; it implements the engine's
``Backend`` protocol (model/backend.py), the only way server/ reaches a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .backend import BackendInfo
from .cache import DecoderCache
from .checkpoint import CheckpointInfo
from .fastpath import prepare_for_inference
from .graph_step import GraphedDecoder, decode_stepper
from .lean_encoder import LeanEncoder, lean_encoder
from .lean_step import LeanDecoder
from .loading import LoadedModel, load_model
from .options import (
    DecodeOptions,
    InputTooLongError,
    TranslationResult,
    blank_result,
    check_range,
    check_texts,
    is_blank,
    output_limit,
)
from .pipeline import merge_results, split_texts
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
    ``path`` may also be an already loaded ``LoadedModel`` (see ``from_parts``).

    >>> t = Translator("models/en-de", device="cpu")        # doctest: +SKIP
    >>> t.translate_batch(["A man is riding a bicycle."])[0].text  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path | LoadedModel,
        device: str | torch.device = "auto",
        *,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        if isinstance(path, LoadedModel):
            loaded, self.path = path, Path(".")
            param = next(loaded.model.parameters())
            self.device, self.dtype = param.device, param.dtype
            self.quantized = False
        else:
            self.path = Path(path)
            self.device = resolve_device(device)
            self.dtype = resolve_dtype(dtype, self.device)
            self.quantized = dtype == INT8
            loaded = load_model(self.path, device=self.device, dtype=self.dtype)
            prepare_for_inference(loaded.model, device=self.device, dtype=self.dtype, quantize=self.quantized)
        # quantized: Linear weights are int8 (dtype="int8"); self.dtype is then the float32 of
        # activations and embeddings.
        self.model: Transformer = loaded.model.eval()
        self.tokenizer: Tokenizer = loaded.tokenizer
        self.info: CheckpointInfo = loaded.info
        self._stepper: Transformer | GraphedDecoder | LeanDecoder | None = None  # built on first search
        self._packed_encoder: LeanEncoder | bool | None = False  # False: not looked at yet
        if self.device.type == "cpu":  # now, not in the first request: the native kernels may compile (once)
            self.stepper()
            self.packed_encoder()

    @classmethod
    def from_parts(cls, model: Transformer, tokenizer: Tokenizer, info: CheckpointInfo | None = None) -> Translator:
        """Wrap an in-memory model (training, tests) without a checkpoint directory."""
        return cls(LoadedModel(model, tokenizer, info or CheckpointInfo()))

    # ------------------------------------------------------------------ Backend (model/backend.py)
    @property
    def max_positions(self) -> int:
        return self.model.cfg.max_positions

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as users name it (``int8`` for a quantized model)."""
        return INT8 if self.quantized else str(self.dtype).removeprefix("torch.")

    def describe(self) -> BackendInfo:
        info = self.info
        return BackendInfo(
            model_id=info.model_id or self.path.name,
            version=info.version,
            source_language=info.source_language.lower(),
            target_language=info.target_language.lower(),
            device=str(self.device),
            dtype=self.dtype_name,
        )

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer.encode_source(list(texts)) if texts else []

    def output_limit(self, source_tokens: int, max_length: int | None) -> int:
        """Most tokens (EOS included) one sentence may produce."""
        return output_limit(source_tokens, max_length, self.max_positions)

    def encode(self, rows: Sequence[Sequence[int]], *, copies: int = 1) -> DecoderCache:
        """Encode source id rows and return a decoder cache with ``copies`` rows per source
        (beams). Cross-attention K/V are computed once per source, then duplicated."""
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        src = torch.full((len(rows), int(lengths.max())), self.model.cfg.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            src[i, : len(r)] = torch.tensor(r, dtype=torch.long)  # (B, S) padded
        packed = self.packed_encoder()
        if packed is not None:  # CPU fast path: no work on padding
            stepper = self.stepper()
            native_reads = isinstance(stepper, LeanDecoder) and stepper.attend is not None
            cross = packed.encode_stacked(src, lengths, zeroed=not native_reads)  # (B, L, 2, Hkv, S, D)
            cache = DecoderCache.over(cross, lengths, capacity=16, zeroed=not native_reads, indirect=native_reads)
        else:
            enc = self.model.encode(src.to(self.device), lengths.to(self.device))
            cache = self.model.init_cache(enc, capacity=16)
        if copies > 1:
            cache.select_rows(torch.arange(len(rows), device=self.device).repeat_interleave(copies))
        return cache

    encode_ids = encode
    """The model-core name of ``encode`` (search and fast-path tests use it)."""

    def decode_step(self, tokens: torch.Tensor, cache: DecoderCache) -> torch.Tensor:
        """The serving engine's step: the same fast path as ``translate_batch`` (``stepper``)."""
        return self.stepper().decode_step(tokens, cache)  # (R, V)

    def packed_encoder(self) -> LeanEncoder | None:
        """The encoder over packed tokens on a prepared CPU model (``model/lean_encoder.py``), else
        ``None`` (``Transformer.encode`` then ``init_cache``)."""
        if self._packed_encoder is False:
            self._packed_encoder = lean_encoder(self.model)
        return self._packed_encoder if isinstance(self._packed_encoder, LeanEncoder) else None

    def stepper(self) -> Transformer | GraphedDecoder | LeanDecoder:
        """What the search calls ``decode_step`` on: CUDA-graph replay on a GPU; on CPU the lean
        step over the prepared model (the module path when the fast path is off)."""
        if self._stepper is None:
            self._stepper = decode_stepper(self.model)
        return self._stepper

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

    # ------------------------------------------------------------------ public API
    def translate_batch(
        self,
        texts: Sequence[str],
        *,
        beam_size: int = DecodeOptions.beam_size,
        max_length: int | None = DecodeOptions.max_length,
        length_penalty: float = DecodeOptions.length_penalty,
        num_hypotheses: int = DecodeOptions.num_hypotheses,
        return_scores: bool = DecodeOptions.return_scores,
        max_batch_size: int = 64,
    ) -> list[TranslationResult]:
        """Translate sentences; results keep input order. Inputs are sorted by length internally and
        decoded in sub-batches of at most ``max_batch_size`` sentences. Blank texts give ``""``; a text
        over ``max_positions`` tokens raises ``InputTooLongError`` (``ferry.model.options``)."""
        options = DecodeOptions(
            beam_size=beam_size,
            max_length=max_length,
            length_penalty=length_penalty,
            num_hypotheses=num_hypotheses,
            return_scores=return_scores,
        )
        return self._translate_sentences(texts, options, max_batch_size)

    def translate(
        self, texts: Sequence[str], options: DecodeOptions | None = None, *, max_batch_size: int = 64
    ) -> list[TranslationResult]:
        """Translate texts through the text stage (``ferry.text.segment``: texts → sentences, all
        decoded together → ``reassemble``), the same path as the server's; one result per text."""
        options = options if options is not None else DecodeOptions()
        segmented = split_texts(check_texts(texts), options)
        results = self._translate_sentences(segmented.sentences, options, max_batch_size)
        return merge_results(segmented, results)

    @torch.inference_mode()
    def _translate_sentences(
        self, texts: Sequence[str], options: DecodeOptions, max_batch_size: int
    ) -> list[TranslationResult]:
        texts = check_texts(texts)
        options.validate(self.max_positions)
        check_range("max_batch_size", max_batch_size, 1, 1 << 20)
        if not texts:
            return []
        results: list[TranslationResult | None] = [None] * len(texts)
        ids = self.tokenize(texts)
        todo = []
        for i, text in enumerate(texts):
            if is_blank(text):
                results[i] = blank_result(options)
            elif len(ids[i]) > self.max_positions:
                raise InputTooLongError(i, len(ids[i]), self.max_positions)
            else:
                todo.append(i)
        todo.sort(key=lambda i: len(ids[i]), reverse=True)
        for start in range(0, len(todo), max_batch_size):
            chunk = todo[start : start + max_batch_size]
            hyps = self._search([ids[i] for i in chunk], options)
            for i, nbest in zip(chunk, hyps):
                results[i] = self.make_result(nbest, len(ids[i]), options.return_scores)
        return [r for r in results if r is not None]

    def _search(self, rows: list[list[int]], options: DecodeOptions) -> list[list[Hypothesis]]:
        searcher = self.new_searcher(
            options.beam_size, length_penalty=options.length_penalty, n_best=options.num_hypotheses
        )
        cache = self.encode(rows)  # one row per sentence: beams fork after the first step
        limits = [self.output_limit(len(r), options.max_length) for r in rows]
        found = run_search(
            self.stepper(), cache, searcher, list(range(len(rows))), limits, expand_after_first_step=True
        )
        return [found[i] for i in range(len(rows))]


def load_translator(path: str | Path, *, device: str | torch.device = "auto", dtype: str | None = None) -> Translator:
    """``Translator(path, device, dtype=dtype)``: any supported model directory."""
    return Translator(path, device, dtype=dtype)
