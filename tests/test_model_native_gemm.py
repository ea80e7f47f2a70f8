"""The native float32 Linear (model/gemm.c via ``native.Linear``) against ``F.linear``: every row
count and block shape, odd widths, bias/ReLU/residual, threads; and its argument checks."""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch
import torch.nn.functional as F
from ferry.model import native

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build model/gemm.c")


def _linear(
    n: int, k: int, *, bias: bool = True, relu: bool = False
) -> tuple[native.Linear, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(n * 1000 + k)
    w = torch.randn(n, k)
    b = torch.randn(n) if bias else None
    lin = native.linear(w, b, relu=relu)
    assert lin is not None
    return lin, w, b


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 13, 17, 64, 131])
@pytest.mark.parametrize(("n", "k"), [(16, 8), (1, 5), (17, 3), (40, 33), (256, 256), (100, 1024)])
def test_linear_matches_torch(rows: int, n: int, k: int) -> None:
    lin, w, b = _linear(n, k)
    x = torch.randn(rows, k)
    torch.testing.assert_close(lin(x), F.linear(x, w, b), atol=1e-4 * k**0.5, rtol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_bias_relu_and_residual(bias: bool, relu: bool) -> None:
    lin, w, b = _linear(50, 24, bias=bias, relu=relu)
    x = torch.randn(9, 24)
    want = F.linear(x, w, b)
    if relu:
        want = want.relu()
    torch.testing.assert_close(lin(x), want, atol=1e-4, rtol=1e-5)
    residual = torch.randn(9, 50)
    out = residual.clone()
    assert lin.add_to(x, out) is out
    torch.testing.assert_close(out, residual + want, atol=1e-4, rtol=1e-5)


def test_a_rows_result_does_not_depend_on_its_batch_or_the_threads() -> None:
    """Each output is the same in-order sum whatever rows are beside it (block shape) and however
    the panels are split over threads: bit for bit."""
    lin, _, _ = _linear(8000, 256)
    x = torch.randn(23, 256)
    alone = torch.cat([lin(x[i : i + 1]) for i in range(23)])
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert torch.equal(lin(x), alone)
            for start, end in ((0, 6), (5, 7), (1, 4), (3, 23)):
                assert torch.equal(lin(x[start:end]), alone[start:end])
    finally:
        torch.set_num_threads(before)


def test_strided_rows_in_and_out() -> None:
    lin, w, b = _linear(20, 12)
    wide = torch.randn(7, 30)
    x = wide[:, 5:17]  # rows 30 apart
    torch.testing.assert_close(lin(x), F.linear(x, w, b), atol=1e-4, rtol=1e-5)
    out = torch.zeros(7, 48)
    lin.add_to(x, out[:, 10:30])
    torch.testing.assert_close(out[:, 10:30], F.linear(x, w, b), atol=1e-4, rtol=1e-5)
    assert not out[:, :10].any() and not out[:, 30:].any()  # nothing written beside the view


def test_no_rows_gives_an_empty_result() -> None:
    lin, _, _ = _linear(16, 8)
    assert lin(torch.empty(0, 8)).shape == (0, 16)


def test_rejects_what_it_cannot_read() -> None:
    lin, _, _ = _linear(16, 8)
    with pytest.raises(ValueError, match="expects 8 input features"):
        lin(torch.randn(3, 9))
    with pytest.raises(ValueError, match="float32"):
        lin(torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous rows"):
        lin(torch.randn(8, 3).t())
    with pytest.raises(ValueError, match=r"adds into a \(3, 16\)"):
        lin.add_to(torch.randn(3, 8), torch.zeros(3, 15))
    with pytest.raises(ValueError, match="2-D float32 CPU weight"):
        native.linear(torch.randn(4, 4, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="bias of 4 values"):
        native.linear(torch.randn(4, 4), torch.randn(5))


def test_threads_run_on_torchs_own_openmp_runtime() -> None:
    """The entry points handed to gemm.c are those of the runtime torch runs on: they see torch's
    thread setting (a second OpenMP runtime in the process, as other packages bring, would not, and
    its spinning threads stalled a 2-thread decode for milliseconds per GEMM)."""
    omp = native.openmp_runtime()
    if omp is None:
        pytest.skip("torch runs without OpenMP here")
    omp.omp_get_max_threads.restype = ctypes.c_int
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert omp.omp_get_max_threads() == threads
    finally:
        torch.set_num_threads(before)


def _int8_reference(lin: native.Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """What qgemm.c computes, in float64: each row quantized to 7 bits with its own scale and zero
    point (the range always holds 0), times the int8 weights, rescaled, plus the bias."""
    lo = x.clamp(max=0).amin(1, keepdim=True)
    hi = x.clamp(min=0).amax(1, keepdim=True)
    s = (hi - lo) / 127
    s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.floor(-lo * (1 / s) + 0.5).clamp(0, 127)
    q = torch.floor(x * (1 / s) + z + 0.5).clamp(0, 127)  # (M, K) in [0, 127]
    wq = torch.round(lin.dequantized / lin.scale[:, None]).double()  # (N, K) int8 values
    y = ((q.double() - z.double()) @ wq.t()) * s.double() * lin.scale.double()[None, :]
    if lin.bias is not None:
        y = y + lin.bias.double()
    return y.float()


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9, 64])
@pytest.mark.parametrize(("n", "k"), [(16, 8), (17, 5), (40, 33), (256, 256), (300, 1024)])
def test_int8_linear_computes_its_quantized_product(rows: int, n: int, k: int) -> None:
    torch.manual_seed(rows * 100 + n + k)
    w, b = torch.randn(n, k) * 0.1, torch.randn(n)
    lin = native.int8_linear(w, b)
    assert lin is not None
    x = torch.randn(rows, k)
    got = lin(x)
    torch.testing.assert_close(got, _int8_reference(lin, x), atol=2e-4 * k**0.5, rtol=1e-4)
    # and it stays an approximation of the float Linear: 7-bit activations, 8-bit weights
    assert (got - F.linear(x, w, b)).abs().max() < 0.05 * F.linear(x, w, b).abs().max()


def test_int8_bias_relu_residual_and_threads() -> None:
    torch.manual_seed(3)
    w = torch.randn(70, 24)
    lin = native.int8_linear(w, None, relu=True)
    assert lin is not None
    x = torch.randn(11, 24)
    want = _int8_reference(lin, x).relu()
    torch.testing.assert_close(lin(x), want, atol=1e-4, rtol=1e-5)
    out = torch.ones(11, 70)
    lin.add_to(x, out)
    torch.testing.assert_close(out, want + 1, atol=1e-4, rtol=1e-5)
    alone = torch.cat([lin(x[i : i + 1]) for i in range(11)])
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(lin(x), alone)  # integer sums: exact whatever the rows or threads
    finally:
        torch.set_num_threads(before)
    zeros = torch.zeros(2, 24)
    assert torch.equal(lin(zeros), torch.zeros(2, 70))  # an all-zero row (scale 1, zero point 0)
