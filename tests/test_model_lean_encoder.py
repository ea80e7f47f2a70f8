"""The packed encoder (model/lean_encoder.py) gives the cross-attention K/V of ``Transformer.encode``
+ ``init_cache`` on every real position, for every architecture variant and int8, while running its
position-wise work on the real tokens only (and, with the native attention, attention too); padding
positions hold zeros; translations are unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from ferry.model import Translator
from ferry.model.attention import padding_mask
from ferry.model.fastpath import prepare_for_inference
from ferry.model.lean_encoder import LeanEncoder, lean_encoder
from ferry.model.transformer import Transformer
from test_model_lean_step import VARIANTS, _model

LENGTHS = [5, 1, 9, 3]


def _batch(model: Transformer, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    src = torch.randint(4, model.cfg.src_vocab_size, (len(lengths), max(lengths)), generator=gen)
    for i, n in enumerate(lengths):
        src[i, n:] = model.cfg.pad_id  # (B, S) padded
    return src, torch.tensor(lengths)


def _compare(model: Transformer, *, atol: float, lengths: list[int] = LENGTHS, use_native: bool = True) -> None:
    src, lens = _batch(model, lengths)
    lean = LeanEncoder(model, native_attention=use_native)
    if use_native and shutil.which("cc") is not None:
        assert lean.attend is not None  # attention on the packed tokens (model/attend.c)
    with torch.inference_mode():
        want = model.init_cache(model.encode(src, lens), capacity=4)
        cross_k, cross_v = lean.encode(src, lens)
    real = padding_mask(lens, src.shape[1])[:, :, 0, :, None]  # (B, 1, S, 1)
    assert len(cross_k) == len(cross_v) == model.cfg.decoder_layers
    for layer, (k, v) in enumerate(zip(cross_k, cross_v)):
        assert k.shape == want.cross_k[layer].shape and v.shape == want.cross_v[layer].shape
        torch.testing.assert_close(k * real, want.cross_k[layer] * real, atol=atol, rtol=0)
        torch.testing.assert_close(v * real, want.cross_v[layer] * real, atol=atol, rtol=0)
        assert not (k * ~real).any() and not (v * ~real).any()  # padding: zeros, never garbage


@pytest.mark.parametrize("use_native", [False, True], ids=["torch-attention", "native-attention"])
@pytest.mark.parametrize("name", VARIANTS)
def test_packed_encoder_equals_module_encoder(name: str, use_native: bool) -> None:
    _compare(_model(VARIANTS[name]), atol=1e-5, use_native=use_native)


def test_packed_encoder_int8() -> None:
    # Dynamic int8 quantizes each activation tensor with one scale from its min/max: padding rows
    # (which the module path computes) move it, so only a batch without padding matches exactly.
    _compare(_model(VARIANTS["pre-norm"], quantize=True), atol=1e-5, lengths=[6, 6, 6])


def test_only_prepared_cpu_models_get_one() -> None:
    model = Transformer(VARIANTS["pre-norm"]).eval()
    assert lean_encoder(model) is None  # not prepared: no fused projections
    prepare_for_inference(model, gemm="mkl")
    assert isinstance(lean_encoder(model), LeanEncoder)


def test_too_long_source_is_refused() -> None:
    model = _model(VARIANTS["pre-norm"])
    src = torch.full((1, model.cfg.max_positions + 1), 5)
    with pytest.raises(ValueError, match="exceeds max_positions"):
        LeanEncoder(model).encode(src, torch.tensor([src.shape[1]]))


def test_translations_are_unchanged(tiny_checkpoint: Path, tiny_pairs: list[tuple[str, str]]) -> None:
    texts = [s for s, _ in tiny_pairs[:24]]
    translator = Translator(tiny_checkpoint, device="cpu")
    assert translator.packed_encoder() is not None
    packed = translator.translate_batch(texts, beam_size=3, max_batch_size=7)  # mixed lengths per batch
    translator._packed_encoder = None  # the module path
    assert translator.packed_encoder() is None
    module = translator.translate_batch(texts, beam_size=3, max_batch_size=7)
    assert [r.hypotheses for r in packed] == [r.hypotheses for r in module]
