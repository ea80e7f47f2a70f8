"""The lean decode step (model/lean_step.py) computes what ``Transformer.decode_step`` computes on the
same prepared model, for every architecture variant, beam groups, rows at different positions
(continuous batching) and int8. With torch's attention it runs the same operations in the same order,
so logits are equal bit for bit; with the native attention (model/attend.c) they are equal within
float32 rounding (another summation order and exp), and the K/V it stores in the cache too, on a
cache whose unwritten memory holds NaN (it is not zeroed for the native decoder)."""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from ferry.model import Translator
from ferry.model.cache import DecoderCache
from ferry.model.config import TransformerConfig
from ferry.model.fastpath import prepare_for_inference
from ferry.model.graph_step import decode_stepper
from ferry.model.lean_step import LeanDecoder
from ferry.model.transformer import Transformer

BASE = TransformerConfig(
    src_vocab_size=40,
    tgt_vocab_size=40,
    d_model=32,
    n_heads=4,
    encoder_layers=2,
    decoder_layers=2,
    ffn_dim=64,
    max_positions=32,
)
VARIANTS = {
    "post-norm relu": BASE,
    "pre-norm": replace(BASE, norm_position="pre"),
    "grouped-query": replace(BASE, n_kv_heads=2, norm_position="pre"),
    "gelu, logits bias, learned positions": replace(
        BASE, activation="gelu", final_logits_bias=True, positions="learned", scale_embedding=False
    ),
    "no biases, separate output": replace(BASE, attention_bias=False, ffn_bias=False, tie_output=False),
}


def _model(cfg: TransformerConfig, *, quantize: bool = False, use_native: object = False) -> Transformer:
    """A prepared model: torch's GEMMs (MKL, fbgemm for int8), or with ``use_native="fused"`` the
    native ones, with which a pre-norm ReLU decoder runs all its layers in one native call."""
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    if cfg.final_logits_bias:
        torch.nn.init.normal_(model.logits_bias)  # type: ignore[arg-type]
    native = use_native == "fused"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FERRY_QENGINE", "native" if native else "fbgemm")
        prepare_for_inference(model, gemm="native" if native else "mkl", quantize=quantize)
    return model


def _cache(model: Transformer, lengths: list[int], seed: int = 1) -> DecoderCache:
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, model.cfg.src_vocab_size, (len(lengths), max(lengths)), generator=gen)
    return model.init_cache(model.encode(src, torch.tensor(lengths)), capacity=4)


NO_CC = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the native kernels")
NATIVE = [
    pytest.param(False, id="torch-attention"),
    pytest.param(True, id="native-attention", marks=NO_CC),
    pytest.param("fused", id="native-gemms-and-fused-layers", marks=NO_CC),
]


def _lean(model: Transformer, use_native: object) -> LeanDecoder:
    lean = LeanDecoder(model, native_attention=bool(use_native))
    if use_native and next(model.parameters()).dtype == torch.float32:
        assert lean.attend is not None, "the native kernels did not build (see the ferry.model.native log)"
    cfg = model.cfg
    if use_native == "fused" and cfg.norm_position == "pre" and cfg.activation == "relu":
        assert lean.fused is not None, "a pre-norm ReLU decoder on native GEMMs runs its layers in one call"
    else:
        assert lean.fused is None
    return lean


def _new_poisoned(cache: DecoderCache, like: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``DecoderCache._new`` where uninitialised memory holds NaN, as recycled memory may."""
    return like.new_zeros(shape) if cache.zeroed else like.new_full(shape, math.nan)


def _poison(cache: DecoderCache) -> None:
    """Make ``cache`` one the native decoder may use (``zeroed=False``) and fill everything no row
    has written with NaN: self-attention positions (none written yet) and cross-attention padding.
    The native attention must never read them (the results compared stay finite and equal)."""
    cache.zeroed = False
    cache._table = DecoderCache._identity_table(cache.row_capacity, cache.capacity, cache.lengths.device)
    assert cache.indirect
    cache._self.fill_(math.nan)
    for k, v in zip(cache.cross_k, cache.cross_v):
        width = k.shape[2]
        padding = torch.arange(width)[None, :] >= cache.src_lengths[:: cache.group, None]  # (N, S)
        k.masked_fill_(padding[:, None, :, None], math.nan)
        v.masked_fill_(padding[:, None, :, None], math.nan)


def _run_both(
    model: Transformer, make_cache: object, steps: int, edit: object = None, *, use_native: object = False
) -> None:
    """Decode ``steps`` greedy steps through the module path and the lean path on twin caches."""
    lean = _lean(model, use_native)
    caches = [make_cache(), make_cache()]  # type: ignore[operator]
    if use_native:
        _poison(caches[1])
    tokens = torch.full((caches[0].num_rows,), model.cfg.decoder_start_id)
    with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(DecoderCache, "_new", _new_poisoned)
        for step in range(steps):
            want = model.decode_step(tokens, caches[0])
            got = lean.decode_step(tokens, caches[1])
            if use_native:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"step {step}")
                for layer in range(caches[0].num_layers):  # each row's history, read through the table
                    for mine, theirs in zip(caches[1].self_kv(layer), caches[0].self_kv(layer)):
                        for row, written in enumerate(caches[0].lengths_host):  # unwritten memory differs
                            torch.testing.assert_close(
                                mine[row, :, :written], theirs[row, :, :written], rtol=1e-4, atol=1e-5
                            )
            else:
                assert torch.equal(got, want), f"step {step}"
            assert caches[1].lengths_host == caches[0].lengths_host
            tokens = want.argmax(-1)
            if edit is not None:
                tokens = edit(step, caches, tokens)  # type: ignore[operator]


@pytest.mark.parametrize("use_native", NATIVE)
@pytest.mark.parametrize("name", VARIANTS)
def test_lean_step_equals_module_step(name: str, use_native: object) -> None:
    model = _model(VARIANTS[name], use_native=use_native)
    _run_both(model, lambda: _cache(model, [5, 3, 7]), steps=9, use_native=use_native)  # past the capacity


@pytest.mark.parametrize("use_native", NATIVE)
@pytest.mark.parametrize("name", ["post-norm relu", "grouped-query"])
def test_lean_step_with_beam_groups_and_reorders(name: str, use_native: object) -> None:
    model = _model(VARIANTS[name], use_native=use_native)

    def beams() -> DecoderCache:
        cache = _cache(model, [6, 4])
        cache.select_rows(torch.arange(2).repeat_interleave(3))  # 3 beams share each encoder row
        assert cache.group == 3
        return cache

    def reorder(step: int, caches: list[DecoderCache], tokens: torch.Tensor) -> torch.Tensor:
        if step == 3:  # a sentence finishes while the other's beams are reordered in the same edit
            keep = torch.tensor([2, 2, 0])
            for cache in caches:
                cache.select_rows(keep)
            return tokens[keep]
        if tokens.numel() == 3:
            order = torch.tensor([1, 0, 0]) if step % 2 else torch.tensor([2, 2, 1])
        else:
            order = torch.tensor([2, 0, 0, 4, 5, 3]) if step % 2 else torch.tensor([0, 0, 1, 3, 3, 5])
        for cache in caches:
            cache.reorder(order)
        return tokens[order]

    _run_both(model, beams, steps=8, edit=reorder, use_native=use_native)


@pytest.mark.parametrize("use_native", NATIVE)
def test_lean_step_with_rows_at_different_positions(use_native: object) -> None:
    """Continuous batching: a request joins after two steps, another leaves."""
    model = _model(VARIANTS["pre-norm"], use_native=use_native)

    def join(step: int, caches: list[DecoderCache], tokens: torch.Tensor) -> torch.Tensor:
        if step == 1:
            for cache in caches:
                cache.extend(_cache(model, [4], seed=7))
            return torch.cat([tokens, torch.tensor([model.cfg.decoder_start_id])])
        if step == 4:
            for cache in caches:
                cache.select_rows(torch.tensor([0, 2, 3]))
            return tokens[[0, 2, 3]]
        return tokens

    _run_both(model, lambda: _cache(model, [5, 3, 7]), steps=8, edit=join, use_native=use_native)


@pytest.mark.parametrize("use_native", NATIVE)
def test_lean_step_int8(use_native: object) -> None:
    variant = "pre-norm" if use_native == "fused" else "post-norm relu"
    model = _model(VARIANTS[variant], quantize=True, use_native=use_native)
    _run_both(model, lambda: _cache(model, [5, 3]), steps=5, use_native=use_native)


def test_lean_step_stops_at_max_positions() -> None:
    model = _model(replace(BASE, max_positions=3))
    lean, cache = _lean(model, shutil.which("cc") is not None), _cache(model, [2])
    tokens = torch.tensor([model.cfg.decoder_start_id])
    with torch.inference_mode():
        for _ in range(3):
            lean.decode_step(tokens, cache)
        with pytest.raises(ValueError, match="max_positions=3"):
            lean.decode_step(tokens, cache)


def test_cpu_search_uses_the_lean_step_only_on_a_prepared_model(tiny_checkpoint: Path) -> None:
    translator = Translator(tiny_checkpoint, device="cpu")
    assert translator._stepper is not None  # built at load (kernels compiled then), not in the first request
    stepper = translator.stepper()
    assert isinstance(stepper, LeanDecoder)
    # caches skip zeroing exactly when the decoder reads only written positions
    assert translator.encode(translator.tokenize(["a cat"])).zeroed is (stepper.attend is None)
    plain = copy.deepcopy(Transformer(BASE))
    assert decode_stepper(plain) is plain  # unprepared: the module path (the eager reference)
    with pytest.raises(ValueError, match="prepare_for_inference"):
        LeanDecoder(plain)


def test_served_steps_go_through_the_lean_step(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    translator = Translator(tiny_checkpoint, device="cpu")
    calls: list[int] = []
    lean = translator.stepper()
    original = lean.decode_step
    monkeypatch.setattr(lean, "decode_step", lambda t, c: calls.append(len(t)) or original(t, c))
    cache = translator.encode(translator.tokenize(["red cat runs"]))
    with torch.inference_mode():
        translator.decode_step(torch.tensor([translator.model.cfg.decoder_start_id]), cache)
    assert calls == [1]


def test_masked_attention_refuses_a_cache_laid_out_for_the_native_one(tiny_checkpoint: Path) -> None:
    translator = Translator(tiny_checkpoint, device="cpu")
    cache = translator.encode(translator.tokenize(["red cat runs"]))
    if not cache.indirect:
        pytest.skip("the native attention is not available here: caches are plain")
    with torch.inference_mode(), pytest.raises(ValueError, match="native attention"):
        translator.model.decode_step(torch.tensor([translator.model.cfg.decoder_start_id]), cache)


@pytest.mark.parametrize("mode", [True, "fused"])
@pytest.mark.parametrize("seed", range(6))
def test_native_step_through_random_beam_edits(seed: int, mode: object) -> None:
    """Beam reorders (the row table alone moves), sentences leaving with their beams reordered in the
    same edit (K/V rows move, the table is renamed) and sentences joining at other positions, at
    random, against the module path."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build model/attend.c")
    model = _model(VARIANTS["grouped-query"], use_native=mode)
    rng = torch.Generator().manual_seed(seed)
    beams = 3

    def start() -> DecoderCache:
        cache = _cache(model, [6, 4, 5, 3], seed=seed)
        cache.select_rows(torch.arange(4).repeat_interleave(beams))
        return cache

    def edit(step: int, caches: list[DecoderCache], tokens: torch.Tensor) -> torch.Tensor:
        if torch.rand(1, generator=rng).item() < 0.25:  # a sentence joins, at position 0 (continuous batching)
            source_length = int(torch.randint(2, 7, (1,), generator=rng))
            for cache in caches:
                joining = _cache(model, [source_length], seed=step)
                joining.select_rows(torch.zeros(beams, dtype=torch.long))
                cache.extend(joining)
            tokens = torch.cat([tokens, torch.full((beams,), model.cfg.decoder_start_id)])
        sentences = tokens.numel() // beams
        # every row takes a random beam of its own sentence
        order = torch.cat([s * beams + torch.randint(0, beams, (beams,), generator=rng) for s in range(sentences)])
        if sentences > 1 and torch.rand(1, generator=rng).item() < 0.4:  # one sentence leaves
            gone = int(torch.randint(0, sentences, (1,), generator=rng))
            keep = [s for s in range(sentences) if s != gone]
            order = torch.cat([order[s * beams : (s + 1) * beams] for s in keep])
            for cache in caches:
                cache.select_rows(order)
        else:
            for cache in caches:
                cache.reorder(order)
        return tokens[order]

    _run_both(model, start, steps=10, edit=edit, use_native=mode)


def test_native_step_when_histories_are_copied_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback of an indirect selection (each history copied into its own row) decodes the same."""
    from ferry.model import cache as cache_module

    monkeypatch.setattr(cache_module, "_placement", lambda history, group: None)
    for seed in range(2):
        for mode in (True, "fused"):
            test_native_step_through_random_beam_edits(seed, mode)


@NO_CC
def test_fused_layers_refuse_what_they_cannot_read() -> None:
    model = _model(VARIANTS["pre-norm"], use_native="fused")
    lean = _lean(model, "fused")
    assert lean.fused is not None
    cache = _cache(model, [5, 3])
    cache.zeroed = False
    cache._table = DecoderCache._identity_table(cache.row_capacity, cache.capacity, cache.lengths.device)
    self_kv, cross_kv = cache.buffers
    cross = cache.cross_k[0]
    ok = dict(
        lengths=cache.lengths,
        src_lengths=cache.src_lengths,
        group=1,
        table=cache.row_table,
        self_kv=self_kv,
        self_rows=2,
        cross_kv=cross_kv,
        cross_rows=cross.shape[0],
        cross_positions=cross.shape[2],
    )
    with torch.inference_mode():
        with pytest.raises(ValueError, match=r"\(R, 32\) activations"):
            lean.fused(torch.zeros(2, 31), **ok)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="fewer lengths"):
            lean.fused(torch.zeros(3, 32), **ok)  # type: ignore[arg-type]
        past = dict(ok, lengths=torch.tensor([0, cache.capacity]))  # a row past the K/V buffer
        with pytest.raises(ValueError, match="outside the K/V buffers"):
            lean.fused(torch.zeros(2, 32), **past)  # type: ignore[arg-type]
        out = lean.fused(torch.zeros(2, 32), **ok)  # type: ignore[arg-type]
        assert torch.isfinite(out).all()


@NO_CC
def test_fused_layers_serve_several_threads_at_once() -> None:
    """One decoder, two engine threads, two caches: each thread's steps equal the same steps run
    alone. Regression: the call's arguments once lived in one structure shared by all callers, so a
    thread ran on another's rows and cache (ValueError, then a corrupted heap in `ferry serve`)."""
    import threading

    # wide enough that a step's native call outlasts the other thread's Python between its calls
    wide = replace(VARIANTS["grouped-query"], d_model=256, ffn_dim=1024, max_positions=40)
    model = _model(wide, use_native="fused")
    lean = _lean(model, "fused")
    shapes = [[5, 3, 7] * 8, [2, 6, 4, 4, 3] * 6]
    steps = 12

    def run(lengths: list[int], seed: int, out: list[torch.Tensor]) -> None:
        cache = _cache(model, lengths, seed=seed)
        cache.zeroed = False
        cache._table = DecoderCache._identity_table(cache.row_capacity, cache.capacity, cache.lengths.device)
        tokens = torch.full((cache.num_rows,), model.cfg.decoder_start_id)
        with torch.inference_mode():
            for _ in range(steps):
                logits = lean.decode_step(tokens, cache)
                out.append(logits)
                tokens = logits.argmax(-1)

    alone: list[list[torch.Tensor]] = [[], []]
    for i, lengths in enumerate(shapes):
        run(lengths, i, alone[i])
    for _ in range(3):
        together: list[list[torch.Tensor]] = [[], []]
        threads = [threading.Thread(target=run, args=(lengths, i, together[i])) for i, lengths in enumerate(shapes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for want, got in zip(alone, together):
            assert len(got) == steps
            for a, b in zip(want, got):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@NO_CC
def test_fused_layers_with_threads_and_many_rows() -> None:
    """Two threads (the GEMMs inside the fused step split their panels) and twenty rows at several
    positions: the same logits and K/V as the module path."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = _model(VARIANTS["grouped-query"], use_native="fused")
        _run_both(model, lambda: _cache(model, [5, 3, 7, 2, 6] * 4), steps=6, use_native="fused")
    finally:
        torch.set_num_threads(before)
