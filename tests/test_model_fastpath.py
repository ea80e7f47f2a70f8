"""The inference fast path (model/fastpath.py) gives the eager path's tokens; the cache's shared
cross-attention rows and spare-buffer reorders are invisible to decoding.

Tolerances: float32 fast path = identical tokens and logits within 1e-4 of eager (oneDNN and MKL sum in
different orders); int8 (per-channel dynamic quantization) = at least 90% of the tiny pairs
translated exactly (it is a different model numerically; on en-de test2016 BLEU stays within 0.3).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from ferry.model import Translator
from ferry.model.cache import DecoderCache
from ferry.model.fastpath import PackedLinear, fast_path_report, onednn_available, prepare_for_inference
from ferry.model.loading import load_model

QENGINES = torch.backends.quantized.supported_engines
GEMMS = [
    "mkl",
    pytest.param("onednn", marks=pytest.mark.skipif(not onednn_available(), reason="no oneDNN")),
    pytest.param("native", marks=pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")),
]


def _pair(tiny_checkpoint: Path, **prepare: object) -> tuple[Translator, Translator]:
    eager = Translator(load_model(tiny_checkpoint))
    loaded = load_model(tiny_checkpoint)
    prepare_for_inference(loaded.model, **prepare)  # type: ignore[arg-type]
    return eager, Translator(loaded)


@pytest.mark.parametrize("gemm", GEMMS)
def test_float32_fast_path_gives_eager_tokens(tiny_checkpoint: Path, tiny_pairs: list, gemm: str) -> None:
    eager, fast = _pair(tiny_checkpoint, gemm=gemm)
    report = fast_path_report(fast.model)
    assert report is not None and set(report.gemm.values()) <= {gemm, "mkl"}
    sources = [s for s, _ in tiny_pairs]
    for beam in (1, 4):
        want = eager.translate_batch(sources, beam_size=beam, max_batch_size=16, return_scores=True)
        got = fast.translate_batch(sources, beam_size=beam, max_batch_size=16, return_scores=True)
        assert [r.text for r in got] == [r.text for r in want]
        assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-4)


def test_fast_step_logits_match_eager(tiny_checkpoint: Path) -> None:
    eager, fast = _pair(tiny_checkpoint, gemm="auto")
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    lengths = torch.tensor([4, 3])
    with torch.inference_mode():
        caches = [t.model.init_cache(t.model.encode(src, lengths)) for t in (eager, fast)]
        tokens = torch.tensor([2, 2])
        for _ in range(5):
            a, b = (t.model.decode_step(tokens, c) for t, c in zip((eager, fast), caches))
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
            tokens = a.argmax(-1)


def test_prepared_model_keeps_its_state_dict(tiny_checkpoint: Path) -> None:
    eager, fast = _pair(tiny_checkpoint)
    a, b = eager.model.state_dict(), fast.model.state_dict()
    assert a.keys() == b.keys()  # fused projections stay out; packed Linears keep their names
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert isinstance(fast.model.output, PackedLinear)
    assert prepare_for_inference(fast.model) is fast_path_report(fast.model)  # idempotent


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param("native", marks=pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")),
        pytest.param("fbgemm", marks=pytest.mark.skipif("fbgemm" not in QENGINES, reason="no fbgemm")),
    ],
)
def test_int8_per_channel_within_tolerance(
    tiny_checkpoint: Path, tiny_pairs: list, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERRY_QENGINE", engine)
    _, fast = _pair(tiny_checkpoint, quantize=True)
    report = fast_path_report(fast.model)
    assert report is not None and report.quantized
    assert set(report.gemm.values()) == {f"int8:{engine}"} and "64x64" in report.gemm  # output too
    sources = [s for s, _ in tiny_pairs]
    for beam in (1, 4):
        got = [r.text for r in fast.translate_batch(sources, beam_size=beam)]
        exact = sum(g == t for g, (_, t) in zip(got, tiny_pairs))
        assert exact >= 0.9 * len(tiny_pairs)


def test_translator_int8_uses_the_fast_path(tiny_checkpoint: Path) -> None:
    t = Translator(tiny_checkpoint, device="cpu", dtype="int8")
    report = fast_path_report(t.model)
    assert report is not None and report.quantized and t.dtype_name == "int8"


# ---------------------------------------------------------------------------------------------- cache
def _cache(rows: list[float], src_len: list[int], *, layers: int = 2) -> DecoderCache:
    s = max(src_len)
    cross = [torch.tensor(rows)[:, None, None, None].expand(len(rows), 1, s, 2).clone() for _ in range(layers)]
    return DecoderCache(cross, [x.clone() for x in cross], torch.tensor(src_len), capacity=4)


def test_beam_expansion_shares_cross_rows_and_regroups_on_drops() -> None:
    c = _cache([1.0, 2.0, 3.0], [2, 5, 1])
    c.select_rows(torch.arange(3).repeat_interleave(2))  # beam 2 expansion
    assert c.group == 2 and c.num_rows == 6 and c.cross_k[0].shape[0] == 3  # no per-beam copy
    assert c.src_lengths_host == [2, 2, 5, 5, 1, 1]
    c.select_rows(torch.tensor([4, 5, 0, 1]))  # sentence 1 finished; whole groups kept
    assert c.group == 2 and c.cross_k[0][:, 0, 0, 0].tolist() == [3.0, 1.0]
    _, cross_bias = c.begin_step()
    assert cross_bias.shape == (2, 1, 1, 2) and cross_bias[0, 0, 0].tolist() == [0.0, float("-inf")]
    c.select_rows(torch.tensor([0, 3]))  # rows no longer in whole groups: one cross row per row
    assert c.group == 1 and c.cross_k[0][:, 0, 0, 0].tolist() == [3.0, 1.0]


def test_extend_joins_grouped_and_ungrouped_caches() -> None:
    a = _cache([1.0, 2.0], [2, 3])
    a.select_rows(torch.arange(2).repeat_interleave(2))
    b = _cache([7.0], [4])
    b.select_rows(torch.arange(1).repeat_interleave(2))
    a.extend(b)  # same group: shared rows stay shared
    assert a.group == 2 and a.cross_k[0][:, 0, 0, 0].tolist() == [1.0, 2.0, 7.0]
    a.extend(_cache([9.0], [1]))  # a plain row joins: everything gets its own cross row
    assert a.group == 1 and a.cross_k[0][:, 0, 0, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 7.0, 7.0, 9.0]
    assert a.src_lengths_host == [2, 2, 3, 3, 4, 4, 1]


def test_reorder_through_the_spare_buffer_updates_the_views() -> None:
    """Regression: a reorder that moves most rows gathers into the spare buffer and swaps it in; the
    per-layer views must follow, or the next step writes into the old buffer."""
    c = _cache([1.0, 2.0, 3.0, 4.0], [1, 1, 1, 1])
    for i in range(4):
        c.self_k[1][i, :, 0] = float(i)
    c.lengths += 1
    c.lengths_host = [1] * 4
    c.reorder(torch.tensor([3, 2, 1, 1]))
    assert c.self_k[1][:, 0, 0, 0].tolist() == [3.0, 2.0, 1.0, 1.0]
    c.reorder(torch.tensor([1, 0, 3, 2]))
    assert c.self_k[1][:, 0, 0, 0].tolist() == [2.0, 3.0, 1.0, 1.0]
    c.self_k[1][0, :, 1] = 9.0  # writes land in the live buffer
    assert c._self[0, 1, 0, 0, 1, 0].item() == 9.0


@pytest.mark.parametrize("beam", [2, 4])
def test_shared_cross_rows_decode_like_copies(tiny_checkpoint: Path, beam: int) -> None:
    model = Translator(load_model(tiny_checkpoint)).model
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    lengths = torch.tensor([4, 3])
    with torch.inference_mode():
        enc = model.encode(src, lengths)
        shared, copied = model.init_cache(enc), model.init_cache(enc)
        expand = torch.arange(2).repeat_interleave(beam)
        shared.select_rows(expand)
        copied.select_rows(expand)
        copied._ungroup()
        assert shared.group == beam and copied.group == 1
        tokens = torch.arange(2 * beam) % 7 + 4
        for _ in range(3):
            a, b = model.decode_step(tokens, shared), model.decode_step(tokens, copied)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            tokens = a.argmax(-1)


def test_mkl_backend_keeps_one_transposed_copy_of_each_weight(tiny_checkpoint: Path) -> None:
    _, fast = _pair(tiny_checkpoint, gemm="mkl")
    out = fast.model.output
    assert isinstance(out, PackedLinear) and out.backend == "mkl" and out.weight_t is not None
    assert out.weight_t.is_contiguous() and out.weight_t.shape == (out.in_features, out.out_features)
    assert out.weight.data_ptr() == out.weight_t.data_ptr()  # the (N, K) buffer is a view, not a copy
    x = torch.randn(3, out.in_features)
    torch.testing.assert_close(out(x), x @ out.weight.t(), atol=1e-5, rtol=1e-5)


def test_gemm_choice_is_measured_per_shape_and_bad_names_are_refused(tiny_checkpoint: Path) -> None:
    from ferry.model.fastpath import BACKENDS, measure_gemms

    weights = [(torch.randn(24, 16), torch.randn(24)), (torch.randn(16, 24), None), (torch.randn(24, 16), None)]
    choice = measure_gemms(weights, rows=(1, 8), reps=1)
    assert set(choice) == {(24, 16), (16, 24)}
    for backend, mkl_rows in choice.values():
        assert backend in BACKENDS and (mkl_rows == 0 or (backend == "onednn" and 1 <= mkl_rows < 8))
    loaded = load_model(tiny_checkpoint)
    with pytest.raises(ValueError, match="gemm='blas'; allowed: auto, native, mkl, onednn"):
        prepare_for_inference(loaded.model, gemm="blas")


def test_gemm_threshold_follows_the_measured_times() -> None:
    from ferry.model.fastpath import _threshold

    shape, rows = (8, 8), (1, 4, 16, 64)

    def times(mkl: list[float], dnn: list[float]) -> dict[tuple[str, tuple[int, int], int], float]:
        return {
            **{("mkl", shape, r): t for r, t in zip(rows, mkl)},
            **{("onednn", shape, r): t for r, t in zip(rows, dnn)},
        }

    assert _threshold(shape, rows, times([1, 2, 3, 4], [2, 3, 4, 5])) == ("mkl", 0)
    assert _threshold(shape, rows, times([2, 3, 4, 5], [1, 2, 3, 4])) == ("onednn", 0)
    assert _threshold(shape, rows, times([1, 2, 8, 16], [2, 4, 4, 8])) == ("onednn", 8)  # cut between 4 and 16
    assert _threshold(shape, rows, times([1, 2, 3, 4], [1.5, 1.0, 3, 4])) == ("onednn", 2)  # one win is enough
    assert _threshold(shape, rows, times([1, 2, 3, 4], [1, 2, 3, 3.8])) == ("mkl", 0)  # within the margin


@pytest.mark.skipif(not onednn_available(), reason="needs oneDNN")
def test_row_split_linear_runs_each_backend_on_its_rows() -> None:
    weight, bias = torch.randn(40, 24), torch.randn(40)
    split = PackedLinear(weight, bias, backend="onednn", activation="relu", mkl_rows=3)
    mkl = PackedLinear(weight, bias, backend="mkl", activation="relu")
    dnn = PackedLinear(weight, bias, backend="onednn", activation="relu")
    assert split.layout == "mkl<=3,onednn" and split.packed is not None and split.weight_t is not None
    assert split.weight.data_ptr() == split.weight_t.data_ptr()  # one float copy besides oneDNN's
    for rows, twin in ((1, mkl), (3, mkl), (4, dnn), (33, dnn)):
        x = torch.randn(rows, 24)
        assert torch.equal(split(x), twin(x)), rows
        torch.testing.assert_close(split(x), torch.relu(x @ weight.t() + bias), atol=1e-5, rtol=1e-5)
    moved = split.double()  # the layouts follow a converted weight; oneDNN cannot pack float64: MKL
    assert moved.layout == "mkl" and moved.weight_t is not None and moved.weight_t.dtype == torch.float64
    for rows in (2, 9):
        x = torch.randn(rows, 24, dtype=torch.float64)
        torch.testing.assert_close(moved(x), torch.relu(x @ moved.weight.t() + moved.bias), atol=1e-9, rtol=1e-9)


def test_mkl_layout_follows_a_moved_or_converted_weight(tiny_checkpoint: Path) -> None:
    import copy

    _, fast = _pair(tiny_checkpoint, gemm="mkl")
    out = fast.model.output
    assert isinstance(out, PackedLinear)
    moved = copy.deepcopy(out).double()  # Module._apply: the transposed copy must follow the buffer
    assert moved.weight_t is not None and moved.weight_t.dtype == torch.float64
    assert moved.weight.data_ptr() == moved.weight_t.data_ptr()
    x = torch.randn(3, out.in_features)
    torch.testing.assert_close(moved(x.double()).float(), out(x), atol=1e-5, rtol=1e-5)
