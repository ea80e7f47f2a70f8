"""Inference fast path: fused projections, the fastest GEMM per CPU, per-channel int8, GPU dtypes.

``prepare_for_inference`` rewrites a loaded ``Transformer`` in place for decoding only (no training
afterwards): Q/K/V of self-attention become one Linear, K/V of cross-attention another; every Linear
the decoder and encoder call becomes a ``PackedLinear`` running on the GEMM library that measured
fastest on this CPU for its shape and row count (oneDNN with the weight reordered once, MKL with the
weight stored transposed, or MKL up to a measured row count and oneDNN above), with the feed-forward
ReLU fused into the oneDNN call; ``quantize=True`` swaps them for per-channel dynamic int8 Linears on
the fastest quantized engine. The eager module tree stays the reference: an unprepared model runs
exactly as before.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .attention import Attention
from .layers import FeedForward
from .transformer import Transformer

log = logging.getLogger(__name__)

GEMM_ENV = "FERRY_GEMM"
"""Environment override of the fp32 GEMM choice: ``auto`` (default: ``native`` where the kernels build,
else measured between MKL and oneDNN), ``native``, ``mkl`` or ``onednn``."""
GEMM_CHOICES = ("auto", "native", "mkl", "onednn")
QENGINE_ENV = "FERRY_QENGINE"
"""Environment override of the int8 engine: ``auto`` (default: ``native`` where the kernels build, else
measured among torch's), ``native``, ``fbgemm``, ``x86`` or ``onednn``."""
FASTPATH_ENV = "FERRY_FASTPATH"
"""``0`` turns ``prepare_for_inference`` off (the eager reference path; int8 then quantizes per tensor)."""
GEMM_MARGIN = 1.10
"""oneDNN is chosen for a shape only when it measures at least this much faster than MKL."""


@dataclass(frozen=True)
class FastPathReport:
    """What ``prepare_for_inference`` chose (logged, and returned for benchmarks and tests)."""

    device: str
    """cpu or cuda."""
    dtype: str
    """Compute dtype of activations (float32, float16, bfloat16)."""
    quantized: bool
    """Linear weights are int8 (dynamic per-channel quantization)."""
    gemm: dict[str, str]
    """Per ``NxK`` weight shape: the GEMM backend chosen (``onednn``, ``mkl``, ``mkl<=T,onednn`` — MKL
    for at most ``T`` rows —, ``int8:<engine>``, ``cuda``)."""
    seconds: float
    """Time spent preparing (measurements and packing)."""


# ---------------------------------------------------------------------------------------------- linears
def onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """``y = act(x W^T + b)`` on one GEMM backend, the weight laid out once for it.

    ``onednn``: the weight reordered into oneDNN's blocked format. ``mkl``: the weight stored
    transposed, ``(K, N)`` contiguous, and computed as ``addmm(b, x, W^T)``: MKL's sgemm without a
    transposed operand ran a decode step's GEMMs 20–30 % faster than ``F.linear`` at 1–32 rows
    (bench/gemm.py). ``onednn`` with ``mkl_rows=T > 0`` keeps both layouts and runs inputs of at most
    ``T`` rows on MKL: on the AVX2 bench machine oneDNN won at 16–256 rows but took 1.7× MKL's time
    for one row. ``activation`` is ``none`` or ``relu`` (the feed-forward's first Linear, fused)."""

    def __init__(
        self, weight: Tensor, bias: Tensor | None, *, backend: str, activation: str = "none", mkl_rows: int = 0
    ) -> None:
        super().__init__()
        if backend not in (*BACKENDS, "native"):
            raise ValueError(f"backend={backend!r}; allowed: {', '.join(BACKENDS)}, native")
        self.backend = backend
        self.activation = activation
        self.mkl_rows = mkl_rows if backend == "onednn" else 0
        """Inputs of at most this many rows run on the ``mkl`` layout (``onednn`` backend only)."""
        self.out_features, self.in_features = weight.shape
        # Buffers under the Linear's names: state_dict() of a prepared model still saves as a checkpoint.
        self.weight: Tensor
        self.bias: Tensor | None
        self.packed: Tensor | None = None
        self.weight_t: Tensor | None = None
        self.native: native.Linear | None = None
        if backend in ("onednn", "native") and not self.mkl_rows:
            self.register_buffer("weight", weight.detach().contiguous())
        else:
            self.register_buffer("weight", weight.detach().t().contiguous().t())  # (N, K) view of (K, N)
        self.register_buffer("bias", bias.detach().contiguous() if bias is not None else None)
        self._lay_out()

    def _lay_out(self) -> None:
        """Derive the backends' layouts from ``weight``: the transposed view, the oneDNN reorder, the
        native panels. A dtype or device the backend cannot run (float64, a GPU) falls back to ``mkl``."""
        self.packed = None
        self.native = None
        if self.backend == "native":
            cpu_fp32 = self.weight.dtype == torch.float32 and self.weight.device.type == "cpu"
            self.native = native.linear(self.weight, self.bias, relu=self.activation == "relu") if cpu_fp32 else None
            if self.native is None:
                self.backend = "mkl"
                self.weight = self.weight.t().contiguous().t()  # (N, K) view of a contiguous (K, N)
        if self.backend == "onednn":
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.contiguous(), None)
            except RuntimeError:
                self.backend, self.mkl_rows = "mkl", 0
                self.weight = self.weight.t().contiguous().t()  # (N, K) view of a contiguous (K, N)
        if self.backend == "mkl" or self.mkl_rows:
            self.weight_t = self.weight.t()  # (K, N), contiguous
            assert self.weight_t.is_contiguous()

    @property
    def layout(self) -> str:
        """The backend as reported: ``mkl``, ``onednn`` or ``mkl<=T,onednn``."""
        return f"mkl<={self.mkl_rows},onednn" if self.mkl_rows else self.backend

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PackedLinear:
        """``.to()``/``.double()``…: the layouts follow the moved weight (the transposed view and the
        oneDNN reorder are not buffers, so ``Module._apply`` alone would leave them behind)."""
        super()._apply(fn, recurse)
        if self.backend == "native":
            self.weight = self.weight.contiguous()
        elif self.backend == "mkl" or self.mkl_rows:
            self.weight = self.weight.t().contiguous().t()  # (N, K) view of a contiguous (K, N)
        self._lay_out()
        return self

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = gemm_fn(self)(x.reshape(-1, self.in_features))  # (N, M)
        return y.view(*lead, self.out_features)  # (..., M)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, backend={self.layout}, activation={self.activation}"


BACKENDS = ("onednn", "mkl")
"""fp32 GEMM backends of ``PackedLinear``."""


def direct_op(op: Any) -> Callable[..., Any]:
    """The C++ callable behind a ``torch.ops`` overload: calling ``OpOverload`` itself first checks in
    Python whether any argument needs Python dispatch (~6 µs per call: 3 % of an int8 greedy run);
    the decode loop's arguments are plain CPU tensors, which never do."""
    return getattr(op, "_op", op)


def gemm_fn(linear: PackedLinear) -> Callable[[Tensor], Tensor]:
    """A plain function ``(N, K) -> (N, M)`` calling ``linear``'s GEMM op directly (no module call)."""
    if linear.native is not None:
        return linear.native
    bias, act = linear.bias, linear.activation
    onednn: Callable[[Tensor], Tensor] | None = None
    if linear.packed is not None:
        op, packed = direct_op(torch.ops.mkldnn._linear_pointwise.default), linear.packed
        onednn = lambda x: op(x, packed, bias, act, [], "")  # noqa: E731
        if not linear.mkl_rows:
            return onednn
    wt = linear.weight_t
    assert wt is not None
    mkl: Callable[[Tensor], Tensor]
    if bias is None:
        mkl = (lambda x: torch.mm(x, wt).relu_()) if act == "relu" else (lambda x: torch.mm(x, wt))
    elif act == "relu":
        mkl = lambda x: torch.addmm(bias, x, wt).relu_()  # noqa: E731
    else:
        mkl = lambda x: torch.addmm(bias, x, wt)  # noqa: E731
    if onednn is None:
        return mkl
    small, big, rows = mkl, onednn, linear.mkl_rows
    return lambda x: small(x) if x.shape[0] <= rows else big(x)


GemmChoice = tuple[str, int]
"""``(backend, mkl_rows)`` of one weight shape (``PackedLinear``'s arguments)."""


def _rounds(rows: int, reps: int) -> int:
    """Measured rounds at ``rows``: four times ``reps`` up to 4 rows (short calls: noisy, cheap to
    repeat), one from 128 rows (long calls: steady, and most of the measuring time)."""
    return 4 * reps if rows <= 4 else reps if rows < 128 else 1


GEMM_ROWS = (1, 4, 16, 64, 256)
"""Row counts the GEMM choice is measured at: decode steps (1 row to beams × batch) and encoder batches."""


def measure_gemms(
    weights: list[tuple[Tensor, Tensor | None]], rows: tuple[int, ...] = GEMM_ROWS, reps: int = 3
) -> dict[tuple[int, int], GemmChoice]:
    """Per ``(N, K)`` weight shape: ``("mkl", 0)``, ``("onednn", 0)``, or ``("onednn", T)`` (MKL for at
    most ``T`` rows), whichever ran it fastest here over ``rows``.

    The weights run in model order, as a decode step runs them, so each GEMM finds its weight out of
    cache as it does in real decoding (a hot loop over one weight favoured the wrong backend); both
    backends alternate, each shape's calls are summed per round and row count, and the best of
    ``reps`` rounds counts (more rounds for few rows). oneDNN must win by
    ``GEMM_MARGIN``. The threshold minimises the summed relative slowdown over the row counts."""
    shapes = {(int(w.shape[0]), int(w.shape[1])) for w, _ in weights}
    if not onednn_available():
        return dict.fromkeys(shapes, ("mkl", 0))
    try:
        candidates = {b: [gemm_fn(PackedLinear(w, bias, backend=b)) for w, bias in weights] for b in BACKENDS}
    except RuntimeError:  # oneDNN cannot pack this dtype here
        return dict.fromkeys(shapes, ("mkl", 0))
    times: dict[tuple[str, tuple[int, int], int], float] = {}
    with torch.inference_mode():
        for r in sorted(rows, reverse=True):
            inputs = {k: torch.randn(r, k, dtype=weights[0][0].dtype) for k in {int(w.shape[1]) for w, _ in weights}}
            for rep in range(_rounds(r, reps) + 1):  # round 0 warms up (oneDNN creates its primitives)
                for backend, fns in candidates.items():
                    this_rep: dict[tuple[str, tuple[int, int], int], float] = {}
                    for (w, _), fn in zip(weights, fns):
                        x = inputs[int(w.shape[1])]
                        start = time.perf_counter()
                        fn(x)
                        key = (backend, (int(w.shape[0]), int(w.shape[1])), r)
                        this_rep[key] = this_rep.get(key, 0.0) + time.perf_counter() - start
                    if rep:  # the best round of each: robust to the odd interruption
                        for key, t in this_rep.items():
                            times[key] = min(times.get(key, t), t)
    return {s: _threshold(s, rows, times) for s in shapes}


def _threshold(
    shape: tuple[int, int], rows: tuple[int, ...], times: dict[tuple[str, tuple[int, int], int], float]
) -> GemmChoice:
    """MKL up to a cut between two measured row counts, oneDNN above: the cut with the least summed
    slowdown against the faster backend at each row count (oneDNN's times weighted by the margin)."""
    ordered = sorted(rows)
    mkl = [times[("mkl", shape, r)] for r in ordered]
    dnn = [times[("onednn", shape, r)] * GEMM_MARGIN for r in ordered]
    best_cut, best_cost = len(ordered), float("inf")
    for cut in range(len(ordered), -1, -1):  # rows ordered[:cut] on MKL; ties favour MKL
        cost = sum((mkl[i] if i < cut else dnn[i]) / min(mkl[i], dnn[i]) for i in range(len(ordered)))
        if cost < best_cost - 1e-9:
            best_cut, best_cost = cut, cost
    if best_cut == len(ordered):
        return ("mkl", 0)
    if best_cut == 0:
        return ("onednn", 0)
    below, above = ordered[best_cut - 1], ordered[best_cut]
    return ("onednn", int((below * above) ** 0.5))


def _median_us(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6


class NativeInt8Linear(nn.Module):
    """``y = act(x W^T + b)`` with per-output-channel int8 weights and each input row quantized on the
    fly (``model/qgemm.c`` through ``native.Int8Linear``); ``activation`` ``relu`` is fused."""

    def __init__(self, weight: Tensor, bias: Tensor | None, *, activation: str = "none") -> None:
        super().__init__()
        kernel = native.int8_linear(weight.detach().float(), bias, relu=activation == "relu")
        if kernel is None:
            raise RuntimeError("the native kernels are unavailable here")
        self.native = kernel
        self.out_features, self.in_features = weight.shape
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self.native(x.reshape(-1, self.in_features).contiguous())  # (N, M)
        return y.view(*lead, self.out_features)  # (..., M)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, int8:native, activation={self.activation}"


def _int8_linear(linear: nn.Linear, engine: str) -> nn.Module:
    """Dynamic int8 Linear with per-output-channel weight scales, packed for ``engine``."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    torch.backends.quantized.engine = engine
    linear.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
    with warnings.catch_warnings():  # torch deprecates torch.ao.quantization in favour of torchao
        warnings.simplefilter("ignore")
        return DynamicLinear.from_float(linear)


def measure_qengine(weight: Tensor, reps: int = 7) -> str:
    """The quantized engine that runs a dynamic int8 Linear of this shape fastest here."""
    engines = [e for e in ("fbgemm", "x86", "onednn") if e in torch.backends.quantized.supported_engines]
    if not engines:
        raise RuntimeError("this torch build has no quantized engine; use float32")
    best, best_t = engines[0], float("inf")
    with torch.inference_mode():
        for engine in engines:
            lin = nn.Linear(weight.shape[1], weight.shape[0])
            lin.weight.data.copy_(weight)
            q = _int8_linear(lin, engine)
            x = torch.randn(32, weight.shape[1])
            for _ in range(3):
                q(x)
            t = _median_us(lambda q=q, x=x: q(x), reps)  # type: ignore[misc]
            if t < best_t:
                best, best_t = engine, t
    return best


# ---------------------------------------------------------------------------------------------- model rewrite
def _fused_linear(parts: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the concatenation of ``parts``' outputs."""
    weight = torch.cat([p.weight.detach() for p in parts], dim=0)  # (sum M, K)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=parts[0].bias is not None)
    fused = fused.to(device=weight.device, dtype=weight.dtype)
    fused.weight.data.copy_(weight)
    if fused.bias is not None:
        fused.bias.data.copy_(torch.cat([p.bias.detach() for p in parts if p.bias is not None]))
    return fused.requires_grad_(False)


FUSED = ("qkv_proj", "kv_proj")
"""Attention attributes holding fused projections: kept out of ``state_dict`` (checkpoints keep the
separate q/k/v weights they were built from)."""


def _set(parent: nn.Module, attr: str, module: nn.Module) -> None:
    if attr in FUSED:
        object.__setattr__(parent, attr, module)  # not a registered submodule: not in state_dict
    else:
        setattr(parent, attr, module)


def fuse_projections(model: Transformer) -> None:
    """Self-attention gets ``qkv_proj`` (Q, K, V in one GEMM), cross-attention ``kv_proj`` (K, V)."""
    for layer in model.encoder_layers:
        attn: Attention = layer.self_attn  # type: ignore[assignment]
        _set(attn, "qkv_proj", _fused_linear([attn.q_proj, attn.k_proj, attn.v_proj]))
    for layer in model.decoder_layers:
        self_attn: Attention = layer.self_attn  # type: ignore[assignment]
        _set(self_attn, "qkv_proj", _fused_linear([self_attn.q_proj, self_attn.k_proj, self_attn.v_proj]))
        cross: Attention = layer.cross_attn  # type: ignore[assignment]
        _set(cross, "kv_proj", _fused_linear([cross.k_proj, cross.v_proj]))


def _inference_linears(model: Transformer) -> Iterator[tuple[nn.Module, str, nn.Linear, str]]:
    """(parent, attribute, Linear, fused activation) for every Linear decoding calls."""
    for layer in [*model.encoder_layers, *model.decoder_layers]:
        for name in ("self_attn", "cross_attn"):
            attn = getattr(layer, name, None)
            if attn is None:
                continue
            for proj in ("qkv_proj", "kv_proj", "q_proj", "out_proj"):
                mod = getattr(attn, proj, None)
                if proj == "q_proj" and getattr(attn, "qkv_proj", None) is not None:
                    continue  # self-attention queries come from the fused projection
                if isinstance(mod, nn.Linear):
                    yield attn, proj, mod, "none"
        ffn: FeedForward = layer.ffn
        relu = ffn.activation is F.relu
        if isinstance(ffn.fc1, nn.Linear):
            yield ffn, "fc1", ffn.fc1, "relu" if relu else "none"
        if isinstance(ffn.fc2, nn.Linear):
            yield ffn, "fc2", ffn.fc2, "none"
    if isinstance(model.output, nn.Linear):
        yield model, "output", model.output, "none"


def fused_activation(x: Tensor) -> Tensor:
    """A feed-forward's activation once it is fused into its ``fc1`` GEMM: the identity."""
    return x


_MEASURED: dict[object, dict[tuple[int, int], GemmChoice]] = {}
"""``measure_gemms`` results of this process by weight shapes (in model order), dtype and threads."""


def pack_linears(model: Transformer, *, gemm: str = "auto") -> dict[str, str]:
    """Replace every inference Linear by a ``PackedLinear`` on the chosen (or measured) backend."""
    linears = list(_inference_linears(model))
    choice: dict[tuple[int, int], GemmChoice]
    fp32_cpu = all(lin.weight.dtype == torch.float32 and lin.weight.device.type == "cpu" for _, _, lin, _ in linears)
    if gemm == "native" or (gemm == "auto" and fp32_cpu and native.library() is not None):
        # model/gemm.c: faster than MKL and oneDNN at every decode row count measured (1-128 rows,
        # 1 and 2 threads, bench/gemm.py); falls back to MKL per Linear where it cannot run
        choice = {(lin.out_features, lin.in_features): ("native", 0) for _, _, lin, _ in linears}
    elif gemm == "auto":
        weights: list[tuple[Tensor, Tensor | None]] = [(lin.weight.detach(), lin.bias) for _, _, lin, _ in linears]
        key = (
            tuple((tuple(w.shape), b is not None) for w, b in weights),
            weights[0][0].dtype,
            torch.get_num_threads(),
        )
        if key not in _MEASURED:  # a second model of the same shapes (the other direction) reuses it
            _MEASURED[key] = measure_gemms(weights)
        choice = _MEASURED[key]
    else:
        if gemm not in GEMM_CHOICES:
            raise ValueError(f"gemm={gemm!r}; allowed: {', '.join(GEMM_CHOICES)}")
        backend = gemm if gemm == "mkl" or onednn_available() else "mkl"
        choice = {(lin.out_features, lin.in_features): (backend, 0) for _, _, lin, _ in linears}
    packed: dict[str, str] = {}
    for parent, attr, lin, act in linears:
        backend, mkl_rows = choice[(lin.out_features, lin.in_features)]
        new = PackedLinear(lin.weight, lin.bias, backend=backend, activation=act, mkl_rows=mkl_rows)
        _set(parent, attr, new)
        packed[f"{lin.out_features}x{lin.in_features}"] = new.layout
        if act == "relu":
            parent.activation = fused_activation  # type: ignore[assignment]  # fused into fc1
    return packed


def quantize_linears(model: Transformer, *, engine: str = "auto") -> dict[str, str]:
    """Replace every inference Linear (output projection included) by a per-channel int8 one."""
    linears = list(_inference_linears(model))
    shapes: dict[str, str] = {}
    if engine == "native" or (engine == "auto" and native.library() is not None):
        # model/qgemm.c: 1.0-2.2x fbgemm's dynamic int8 Linear at 1-128 rows (decode steps gain most)
        for parent, attr, lin, act in linears:
            _set(parent, attr, NativeInt8Linear(lin.weight, lin.bias, activation=act))
            shapes[f"{lin.out_features}x{lin.in_features}"] = "int8:native"
            if act == "relu":
                parent.activation = fused_activation  # type: ignore[assignment]  # fused into fc1
        return shapes
    if engine == "auto":
        engine = measure_qengine(model.output.weight.detach())  # the largest GEMM decides
    torch.backends.quantized.engine = engine
    for parent, attr, lin, _ in linears:
        _set(parent, attr, _int8_linear(lin, engine))
        shapes[f"{lin.out_features}x{lin.in_features}"] = f"int8:{engine}"
    return shapes


def fast_path_report(model: nn.Module) -> FastPathReport | None:
    """What ``prepare_for_inference`` chose for ``model``, or ``None`` if it was not prepared."""
    report = model.__dict__.get("_fast_path")
    return report if isinstance(report, FastPathReport) else None


def prepare_for_inference(
    model: Transformer,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantize: bool = False,
    gemm: str | None = None,
) -> FastPathReport:
    """Rewrite ``model`` in place for fast decoding (see the module docstring); returns what it chose.

    ``gemm``: ``auto``/``native``/``mkl``/``onednn`` (default: ``$FERRY_GEMM`` or ``auto``). The model must not be
    trained afterwards. Already-quantized models (``quantize_dynamic``) are left to that path."""
    start = time.perf_counter()
    gemm = gemm or os.environ.get(GEMM_ENV, "auto")
    if gemm not in GEMM_CHOICES:
        raise ValueError(f"gemm={gemm!r}; allowed: {', '.join(GEMM_CHOICES)} (also settable as ${GEMM_ENV})")
    dev = torch.device(device)
    model.eval().requires_grad_(False)
    if os.environ.get(FASTPATH_ENV, "1") == "0":
        if quantize:
            from .loading import quantize_int8

            quantize_int8(model)
        return FastPathReport(dev.type, str(dtype).removeprefix("torch."), quantize, {"all": "eager"}, 0.0)
    previous = fast_path_report(model)
    if previous is not None:
        return previous
    already_quantized = not any(isinstance(m, nn.Linear) for m in model.modules()) and not isinstance(
        model.output, PackedLinear
    )
    shapes: dict[str, str] = {}
    if not already_quantized:
        model.to(device=dev, dtype=dtype if not quantize else torch.float32)
        fuse_projections(model)
        if dev.type == "cpu":
            if quantize:
                shapes = quantize_linears(model, engine=os.environ.get(QENGINE_ENV, "auto"))
            else:
                shapes = pack_linears(model, gemm=gemm)
        else:
            shapes = {"all": "cuda"}
    report = FastPathReport(
        device=dev.type,
        dtype=str(dtype).removeprefix("torch."),
        quantized=quantize or already_quantized,
        gemm=shapes,
        seconds=time.perf_counter() - start,
    )
    object.__setattr__(model, "_fast_path", report)
    log.info("fast path ready", extra={"fast_path": report.__dict__})
    return report
