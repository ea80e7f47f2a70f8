"""Inference fast path: fused projections, the fastest GEMM per CPU, per-channel int8, GPU dtypes.

``prepare_for_inference`` rewrites a loaded ``Transformer`` in place for decoding only (no training
afterwards): Q/K/V of self-attention become one Linear, K/V of cross-attention another; every Linear
the decoder and encoder call becomes a ``PackedLinear`` running on the GEMM library that measured
fastest on this CPU for its shape (oneDNN with the weight reordered once, or MKL through
``F.linear``), with the feed-forward ReLU fused into the oneDNN call; ``quantize=True`` swaps them for
per-channel dynamic int8 Linears on the fastest quantized engine. The eager module tree stays the
reference: an unprepared model runs exactly as before.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention
from .layers import FeedForward
from .transformer import Transformer

log = logging.getLogger(__name__)

GEMM_ENV = "FERRY_GEMM"
"""Environment override of the fp32 GEMM choice: ``auto`` (measure, default), ``mkl`` or ``onednn``."""
QENGINE_ENV = "FERRY_QENGINE"
"""Environment override of the int8 engine: ``auto`` (measure, default), ``fbgemm``, ``x86`` or ``onednn``."""
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
    """Per ``NxK`` weight shape: the GEMM backend chosen (``onednn``, ``mkl``, ``int8:<engine>``, ``cuda``)."""
    seconds: float
    """Time spent preparing (measurements and packing)."""


# ---------------------------------------------------------------------------------------------- linears
def onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """``y = act(x W^T + b)`` on one GEMM backend, the weight prepacked once for oneDNN.

    ``activation`` is ``none`` or ``relu`` (the feed-forward's first Linear, fused into the GEMM)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, *, backend: str, activation: str = "none") -> None:
        super().__init__()
        if backend not in ("onednn", "mkl"):
            raise ValueError(f"backend={backend!r}; allowed: onednn, mkl")
        self.backend = backend
        self.activation = activation
        self.out_features, self.in_features = weight.shape
        # Buffers under the Linear's names: state_dict() of a prepared model still saves as a checkpoint.
        self.weight: Tensor
        self.bias: Tensor | None
        self.register_buffer("weight", weight.detach().contiguous())
        self.register_buffer("bias", bias.detach().contiguous() if bias is not None else None)
        if backend == "onednn":
            self.packed: Tensor | None = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
        else:
            self.packed = None

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, K)
        if self.packed is not None:
            y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, self.activation, [], "")  # (N, M)
        else:
            y = F.linear(x2, self.weight, self.bias)  # (N, M)
            if self.activation == "relu":
                y = y.relu_()
        return y.view(*lead, self.out_features)  # (..., M)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, backend={self.backend}, activation={self.activation}"


def _median_us(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6


def measure_gemm(weight: Tensor, bias: Tensor | None, rows: tuple[int, ...] = (32, 128), reps: int = 5) -> str:
    """``onednn`` or ``mkl``: which one runs this weight's GEMM faster on this CPU, summed over a few
    typical row counts (decode steps at batch 32, greedy and beam 4). Interleaved runs, medians."""
    if not onednn_available():
        return "mkl"
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
    except RuntimeError:
        return "mkl"
    mkl = dnn = 0.0
    with torch.inference_mode():
        for r in rows:
            x = torch.randn(r, weight.shape[1], dtype=weight.dtype)
            for _ in range(3):  # warm-up (first oneDNN call creates the primitive)
                F.linear(x, weight, bias)
                torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
            for _ in range(2):
                mkl += _median_us(lambda x=x: F.linear(x, weight, bias), reps)  # type: ignore[misc]
                dnn += _median_us(lambda x=x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], ""), reps)  # type: ignore[misc]
    return "onednn" if dnn * GEMM_MARGIN < mkl else "mkl"


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


def pack_linears(model: Transformer, *, gemm: str = "auto") -> dict[str, str]:
    """Replace every inference Linear by a ``PackedLinear`` on the chosen (or measured) backend."""
    choice: dict[tuple[int, int], str] = {}
    for parent, attr, lin, act in list(_inference_linears(model)):
        shape = (lin.out_features, lin.in_features)
        if shape not in choice:
            if gemm == "auto":
                choice[shape] = measure_gemm(lin.weight.detach(), lin.bias)
            else:
                choice[shape] = gemm if onednn_available() else "mkl"
        backend = choice[shape]
        packed = PackedLinear(lin.weight, lin.bias, backend=backend, activation=act)
        _set(parent, attr, packed)
        if act == "relu":
            parent.activation = fused_activation  # type: ignore[assignment]  # fused into fc1
    return {f"{n}x{k}": b for (n, k), b in choice.items()}


def quantize_linears(model: Transformer, *, engine: str = "auto") -> dict[str, str]:
    """Replace every inference Linear (output projection included) by a per-channel int8 one."""
    linears = list(_inference_linears(model))
    if engine == "auto":
        engine = measure_qengine(model.output.weight.detach())  # the largest GEMM decides
    torch.backends.quantized.engine = engine
    shapes: dict[str, str] = {}
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

    ``gemm``: ``auto``/``mkl``/``onednn`` (default: ``$FERRY_GEMM`` or ``auto``). The model must not be
    trained afterwards. Already-quantized models (``quantize_dynamic``) are left to that path."""
    start = time.perf_counter()
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
                shapes = pack_linears(model, gemm=gemm or os.environ.get(GEMM_ENV, "auto"))
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
