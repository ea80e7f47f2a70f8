"""Native CPU kernels, compiled once per machine and called through ctypes: the decoder's attention
step and the search's top-k of log-probabilities (``model/attend.c``), the float32 and int8 Linears
(``model/gemm.c``, ``model/qgemm.c``: ``Linear``, ``Int8Linear``; split over torch's own OpenMP
threads) and a pre-norm decoder's whole layer stack for one step (``model/step.c``: ``DecodeLayers``).

The library is looked up, in order, beside this module (a prebuilt copy, e.g. baked into the
container image by ``python -m ferry.model.native --build``) and in the user cache directory
(``$FERRY_CACHE_DIR``, else ``$XDG_CACHE_HOME/ferry``, else ``~/.cache/ferry``); when neither has it,
it is compiled into the cache directory with the system C compiler (``$CC``, else ``cc``; a few seconds). The
file name carries a hash of the source and flags, so an edited kernel is rebuilt. Without a compiler,
a writable cache or an x86-64/aarch64 Linux-like platform, ``attention()`` returns ``None`` and the
decoder keeps torch's ``scaled_dot_product_attention`` and GEMMs, and the search
``log_softmax``/``topk`` (same results within float rounding). ``FERRY_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

NATIVE_ENV = "FERRY_NATIVE"
"""``0`` turns the native kernels off (torch's attention and top-k everywhere)."""
CACHE_ENV = "FERRY_CACHE_DIR"
"""Where compiled kernels are kept (default ``$XDG_CACHE_HOME/ferry`` or ``~/.cache/ferry``)."""
SOURCES = tuple(Path(__file__).with_name(name) for name in ("attend.c", "gemm.c", "qgemm.c", "step.c"))
OPENMP_ENTRY_POINTS = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")
"""What ``gemm.c`` runs its threads with (libgomp's ABI; LLVM's and Intel's runtimes export it too)."""
FLAGS = (
    "-O3",
    "-shared",
    "-fPIC",
    # Reassociation lets the compiler vectorise the dot products and sums (fp32 results then differ
    # from torch's in the last bits, as any other summation order would); no -ffast-math: the
    # kernel's -inf start value must stay meaningful.
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
)
_ptr = ctypes.c_void_p
_i64 = ctypes.c_int64


def library_name() -> str:
    """``ferry_attend-<hash>.so``: the hash covers the source and the compiler flags."""
    digest = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES) + " ".join(FLAGS).encode()).hexdigest()[:16]
    return f"ferry_attend-{digest}.so"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferry"


def build(directory: Path) -> Path:
    """Compile the kernels into ``directory`` (atomically: concurrent builds are safe) and return the
    library's path. Raises ``RuntimeError`` with the compiler's message when that fails."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (set CC or install gcc)")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / library_name()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        command = [compiler, *FLAGS, "-o", tmp, *map(str, SOURCES), "-lm"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
        os.chmod(tmp, 0o755)  # mkstemp made it owner-only: other users (a container's) must load it
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class _Lin(ctypes.Structure):
    """``ferry_lin`` of model/step.c: one packed Linear."""

    _fields_ = [
        ("int8", _i64),
        ("n", _i64),
        ("k", _i64),
        ("relu", _i64),
        ("w", _ptr),
        ("scale", _ptr),
        ("colsum", _ptr),
        ("bias", _ptr),
    ]


class _Layer(ctypes.Structure):
    """``ferry_layer``: a pre-norm decoder layer's norms and Linears."""

    _fields_ = [
        ("norm_w", _ptr * 3),
        ("norm_b", _ptr * 3),
        *((name, _Lin) for name in ("qkv", "self_out", "cross_q", "cross_out", "fc1", "fc2")),
    ]


class _KV(ctypes.Structure):
    """``ferry_kv``: the stacked K/V buffer of all layers and its element strides."""

    _fields_ = [
        (name, _ptr if name == "base" else _i64)
        for name in ("base", "rows", "positions", "row", "layer", "kv", "head", "pos")
    ]


class _Step(ctypes.Structure):
    """``ferry_step``: one decode step's sizes, activations and cache."""

    _fields_ = [
        *((name, _i64) for name in ("rows", "d_model", "heads", "kv_heads", "head_dim", "group", "layers", "threads")),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("x", _ptr),
        ("layer", ctypes.POINTER(_Layer)),
        ("self", _KV),
        ("cross", _KV),
        ("lengths", _ptr),
        ("src_lengths", _ptr),
        ("table", _ptr),
        ("table_stride", _i64),
    ]


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    fn = lib.ferry_attend
    fn.restype = ctypes.c_int
    fn.argtypes = [
        *(_i64,) * 5,  # rows, heads, kv_heads, head_dim, group
        _ptr,
        _i64,  # q, q row stride
        _ptr,
        _ptr,
        *(_i64,) * 5,  # k, v, kv rows, kv positions, kv row / head / position strides
        _ptr,
        _i64,  # lengths, extra
        _ptr,
        _i64,  # table, table row stride
        _ptr,
        _ptr,
        _i64,  # new_k, new_v, new row stride
        ctypes.c_float,  # scale
        _ptr,
        _i64,  # out, out row stride
    ]
    top = lib.ferry_top_log_probs
    top.restype = ctypes.c_int
    top.argtypes = [_i64, _i64, _ptr, _i64, _ptr, _i64, _i64, _ptr, _ptr]
    linear = lib.ferry_linear
    linear.restype = ctypes.c_int
    # rows, out features, in features, x, x row stride, packed weight, bias, y, y row stride, flags, threads
    linear.argtypes = [_i64, _i64, _i64, _ptr, _i64, _ptr, _ptr, _ptr, _i64, _i64, _i64]
    pack = lib.ferry_pack_weight
    pack.restype = None
    pack.argtypes = [_i64, _i64, _ptr, _i64, _ptr]
    qlinear = lib.ferry_linear_int8
    qlinear.restype = ctypes.c_int
    # rows, out features, in features, x, x row stride, packed weight, scales, column sums, bias, y,
    # y row stride, flags, threads
    qlinear.argtypes = [_i64, _i64, _i64, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64]
    lib.ferry_decode_layers.restype = ctypes.c_int
    lib.ferry_decode_layers.argtypes = [ctypes.POINTER(_Step)]
    lib.ferry_set_openmp.restype = None
    lib.ferry_set_openmp.argtypes = [_ptr, _ptr, _ptr]
    omp = openmp_runtime()
    if omp is not None:
        lib.ferry_set_openmp(*(ctypes.cast(getattr(omp, n), _ptr) for n in OPENMP_ENTRY_POINTS))
    return lib


def openmp_runtime() -> ctypes.CDLL | None:
    """torch's CPU library, through which the OpenMP entry points ``gemm.c`` uses resolve to the
    runtime torch itself runs on; ``None`` where torch has no OpenMP (the native Linears then run on
    one thread). Sharing torch's runtime keeps one thread team: another OpenMP runtime in the process
    (other packages bring their own libgomp copies) would spin its own threads on the same cores."""
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = Path(torch.__file__).parent / "lib" / name
        if not path.exists():
            continue
        try:
            lib = ctypes.CDLL(str(path))  # already loaded by ``import torch``: the same handle
        except OSError:
            continue
        if all(hasattr(lib, n) for n in OPENMP_ENTRY_POINTS):  # dlsym searches its dependencies
            return lib
    return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or ``None`` (turned off, or it cannot be built here: logged once)."""
    if os.environ.get(NATIVE_ENV, "1") == "0":
        return None
    if sys.platform == "win32":
        return None
    name = library_name()
    for directory in (Path(__file__).parent, cache_dir()):
        path = directory / name
        if path.exists():
            try:
                return _load(path)
            except OSError as exc:
                log.info("native kernels at %s do not load (%s); rebuilding", path, exc)
    try:
        return _load(build(cache_dir()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.info("native kernels unavailable, using torch attention: %s", exc)
        return None


class Attention:
    """One-query attention of every row and head over its own K/V prefix (``model/attend.c``).

    ``q`` (R, >= H D) and the result (R, H D) are 2-D (heads side by side in a row); ``k``/``v``
    are (R / group, Hkv, T, D) views with the head dimension contiguous (the cache's buffers), float32
    on the CPU; ``lengths`` (R,) int64: row ``r`` attends to its first ``lengths[r] + extra``
    positions. With ``new_k``/``new_v`` ((R, Hkv D) rows), row ``r`` first stores them at position
    ``lengths[r]`` (the self-attention step: the cache write and the attention in one call). With
    ``table`` ((>= R, >= T) int64, rows contiguous), position ``t`` of row ``r`` is read from K/V row
    ``table[r, t]``, and a store records ``table[r, lengths[r]] = r`` (``DecoderCache``'s
    indirect beam reorders). Lengths and table entries are checked against ``k``'s rows and positions
    (``positions`` overrides the latter for views whose position axis is not their size): a call that
    would read or write outside them raises ``ValueError`` and touches nothing."""

    def __init__(self, lib: ctypes.CDLL, heads: int, kv_heads: int, head_dim: int) -> None:
        self._fn = lib.ferry_attend
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.scale = head_dim**-0.5

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lengths: Tensor,
        *,
        extra: int = 0,
        group: int = 1,
        new_k: Tensor | None = None,
        new_v: Tensor | None = None,
        table: Tensor | None = None,
        positions: int | None = None,
    ) -> Tensor:
        rows = q.shape[0]
        h, d = self.heads, self.head_dim
        ks = k.stride()
        if (
            q.dtype != torch.float32
            or k.dtype != torch.float32
            or v.dtype != torch.float32
            or q.device.type != "cpu"
            or q.stride(1) != 1
            or ks[3] != 1
            or v.stride() != ks
            or lengths.dtype != torch.int64
        ):
            raise ValueError("native attention needs float32 CPU tensors, head dimension contiguous, int64 lengths")
        if lengths.numel() < rows:
            raise ValueError(f"native attention got {lengths.numel()} lengths for {rows} rows")
        if not lengths.is_contiguous():
            lengths = lengths.contiguous()
        table_ptr, table_stride = None, 0
        if table is not None:
            if table.dtype != torch.int64 or table.stride(1) != 1 or table.shape[0] < rows:
                raise ValueError("the row table must be int64 with contiguous rows, one per query row")
            table_ptr, table_stride = table.data_ptr(), table.stride(0)
        out = q.new_empty(rows, h * d)  # (R, H D)
        new_ptr_k = new_ptr_v = None
        new_stride = 0
        if new_k is not None and new_v is not None:
            new_ptr_k, new_ptr_v, new_stride = new_k.data_ptr(), new_v.data_ptr(), new_k.stride(0)
        status = self._fn(
            rows,
            h,
            self.kv_heads,
            d,
            group,
            q.data_ptr(),
            q.stride(0),
            k.data_ptr(),
            v.data_ptr(),
            k.shape[0],
            k.shape[2] if positions is None else positions,
            ks[0],
            ks[1],
            ks[2],
            lengths.data_ptr(),
            extra,
            table_ptr,
            table_stride,
            new_ptr_k,
            new_ptr_v,
            new_stride,
            self.scale,
            out.data_ptr(),
            h * d,
        )
        if status == -2:
            raise ValueError("native attention: a row's length or a row-table entry lies outside the K/V buffers")
        if status != 0:
            raise MemoryError("native attention could not allocate its scratch buffer")
        return out


class TopLogProbs:
    """The ``k`` best ``log_softmax`` values of each row of logits and their tokens, best first, with
    ``banned`` ids never chosen (they still count in the normaliser): what the search does with
    ``log_softmax``, ``index_fill_`` and ``topk``/``max``, in two passes over the logits and without
    writing the (R, V) log-probabilities. ``logits`` (R, V) float32 on the CPU, rows contiguous."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._fn = lib.ferry_top_log_probs

    def __call__(self, logits: Tensor, k: int, banned: Tensor) -> tuple[Tensor, Tensor]:
        rows, vocab = logits.shape
        if logits.dtype != torch.float32 or logits.device.type != "cpu" or logits.stride(1) != 1:
            raise ValueError("native top-k needs float32 CPU logits with contiguous rows")
        if not 1 <= k <= vocab:
            raise ValueError(f"k={k} must be between 1 and the vocabulary size {vocab}")
        if banned.dtype != torch.int64 or banned.device.type != "cpu" or not banned.is_contiguous():
            raise ValueError("banned ids must be a contiguous int64 CPU tensor")
        scores = logits.new_empty(rows, k)  # (R, k)
        tokens = torch.empty(rows, k, dtype=torch.int64)  # (R, k)
        status = self._fn(
            rows,
            vocab,
            logits.data_ptr(),
            logits.stride(0),
            banned.data_ptr(),
            banned.numel(),
            k,
            scores.data_ptr(),
            tokens.data_ptr(),
        )
        if status == -2:
            raise ValueError(f"banned ids must lie in the vocabulary (0..{vocab - 1})")
        if status != 0:
            raise MemoryError("native top-k could not allocate its scratch buffer")
        return scores, tokens


class Linear:
    """``y = act(x W^T + b)`` in ``model/gemm.c``: the weight (N, K) packed once into panels of 16
    output columns; ``x`` (M, K) float32 on the CPU with contiguous rows; ``relu`` fuses the
    activation. ``add_to(x, out)`` adds the result to ``out`` (M, N) in place instead (a residual
    connection without a separate add). Calls split over ``torch.get_num_threads()`` threads when the
    library has OpenMP and the call is large enough; each result is the same whatever the thread
    count or the rows beside it."""

    PANEL = 16
    SYMBOL = "ferry_linear"
    """The library function this Linear calls."""

    def __init__(self, lib: ctypes.CDLL, weight: Tensor, bias: Tensor | None, *, relu: bool = False) -> None:
        if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
            raise ValueError("native Linear needs a 2-D float32 CPU weight")
        self._fn = getattr(lib, self.SYMBOL)
        self.out_features, self.in_features = n, _ = weight.shape
        self.bias = bias.detach().contiguous() if bias is not None else None
        if self.bias is not None and (self.bias.dtype != torch.float32 or self.bias.numel() != n):
            raise ValueError(f"native Linear needs a float32 bias of {n} values")
        self._bias_ptr = self.bias.data_ptr() if self.bias is not None else None
        self._relu = int(relu)
        self._pack(lib, weight.detach())

    def _pack(self, lib: ctypes.CDLL, weight: Tensor) -> None:
        n, k = self.out_features, self.in_features
        w = weight.contiguous()
        self.panels = torch.empty(-(-n // self.PANEL) * k * self.PANEL)  # (N / 16, K, 16) flattened
        lib.ferry_pack_weight(n, k, w.data_ptr(), k, self.panels.data_ptr())

    def _run(self, x: Tensor, out: Tensor, flags: int) -> None:
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 2 or x.stride(1) != 1:
            raise ValueError("native Linear needs 2-D float32 CPU input with contiguous rows")
        if x.shape[1] != self.in_features:
            raise ValueError(f"native Linear expects {self.in_features} input features, got {x.shape[1]}")
        self._kernel(x, out, flags)

    def _weights(self) -> tuple[int, ...]:
        """The packed weight's pointers, as the library function takes them after the input."""
        return (self.panels.data_ptr(),)

    def _kernel(self, x: Tensor, out: Tensor, flags: int) -> None:
        m, n, k = x.shape[0], self.out_features, self.in_features
        weights, bias, threads = self._weights(), self._bias_ptr, torch.get_num_threads()
        status = self._fn(
            m, n, k, x.data_ptr(), x.stride(0), *weights, bias, out.data_ptr(), out.stride(0), flags, threads
        )
        if status != 0:
            raise MemoryError("native Linear could not allocate its scratch buffer")

    def __call__(self, x: Tensor) -> Tensor:
        out = x.new_empty(x.shape[0], self.out_features)  # (M, N)
        self._run(x, out, self._relu)
        return out

    def add_to(self, x: Tensor, out: Tensor) -> Tensor:
        """``out += act(x W^T + b)`` in place; returns ``out``."""
        if (
            out.dtype != torch.float32
            or out.shape != (x.shape[0], self.out_features)
            or out.stride(1) != 1
            or out.device.type != "cpu"
        ):
            raise ValueError(f"native Linear adds into a ({x.shape[0]}, {self.out_features}) float32 CPU tensor")
        self._run(x, out, self._relu | 2)
        return out


class Int8Linear(Linear):
    """``Linear`` with int8 weights (``model/qgemm.c``): one scale per output channel (symmetric,
    [-127, 127]); each input row quantized on the fly to 7 bits with its own scale and zero point.
    ``dequantized`` unpacks the float weight it multiplies by (for references and tests)."""

    GROUP = 4
    SYMBOL = "ferry_linear_int8"

    def _pack(self, lib: ctypes.CDLL, weight: Tensor) -> None:
        n, k = self.out_features, self.in_features
        scale = weight.abs().amax(1) / 127  # (N,)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).contiguous()
        q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (N, K)
        panels, kp = -(-n // self.PANEL), -(-k // self.GROUP) * self.GROUP
        padded = torch.zeros(panels * self.PANEL, kp, dtype=torch.int8)
        padded[:n, :k] = q
        # (N / 16, 16, K / 4, 4) -> (N / 16, K / 4, 16, 4): a k-group of a panel is 64 contiguous bytes
        self.panels = padded.view(panels, self.PANEL, kp // self.GROUP, self.GROUP).permute(0, 2, 1, 3).contiguous()
        self.colsum = q.sum(1, dtype=torch.int32).contiguous()  # (N,)
        self.scale = scale

    @property
    def dequantized(self) -> Tensor:
        """(N, K) float32: the int8 weights times their scales, unpacked from the panels."""
        panels, groups = self.panels.shape[:2]
        q = self.panels.permute(0, 2, 1, 3).reshape(panels * self.PANEL, groups * self.GROUP)  # (N', K')
        return q[: self.out_features, : self.in_features].float() * self.scale[:, None]

    def _weights(self) -> tuple[int, ...]:
        return (self.panels.data_ptr(), self.scale.data_ptr(), self.colsum.data_ptr())


def int8_linear(weight: Tensor, bias: Tensor | None, *, relu: bool = False) -> Int8Linear | None:
    """A native int8 Linear of ``weight``/``bias``, or ``None`` when the kernels are unavailable."""
    lib = library()
    return Int8Linear(lib, weight, bias, relu=relu) if lib is not None else None


def linear(weight: Tensor, bias: Tensor | None, *, relu: bool = False) -> Linear | None:
    """A native float32 Linear of ``weight``/``bias``, or ``None`` when the kernels are unavailable."""
    lib = library()
    return Linear(lib, weight, bias, relu=relu) if lib is not None else None


LAYER_LINEARS = ("qkv", "self_out", "cross_q", "cross_out", "fc1", "fc2")
"""A pre-norm decoder layer's Linears, in ``DecodeLayers``' order."""


class DecodeLayers:
    """Every pre-norm decoder layer of one decode step in one call (``model/step.c``): the layer
    norms, the native Linears (float32 or int8), both attentions (storing the step's K/V) and the
    residual adds run in C on the step's rows; ``x`` (R, d) is updated in place. ``layers``: per
    layer, ``norms`` ((weight, bias) of the self-attention, cross-attention and feed-forward norms)
    and the six native Linears named in ``LAYER_LINEARS``."""

    def __init__(
        self,
        lib: ctypes.CDLL,
        layers: list[tuple[list[tuple[Tensor, Tensor]], dict[str, Linear]]],
        *,
        heads: int,
        kv_heads: int,
        head_dim: int,
        eps: float,
    ) -> None:
        self._fn = lib.ferry_decode_layers
        self._layers = (_Layer * len(layers))()
        self._keep: list[Tensor] = []  # what the structures point into
        d_model = 0
        for (norms, linears), c in zip(layers, self._layers):
            for j, (w, b) in enumerate(norms):
                if (
                    w.dtype != torch.float32
                    or b.dtype != torch.float32
                    or not (w.is_contiguous() and b.is_contiguous())
                ):
                    raise ValueError("native decode layers need contiguous float32 layer norm weights")
                d_model = w.numel()
                c.norm_w[j], c.norm_b[j] = w.data_ptr(), b.data_ptr()
                self._keep += [w, b]
            for name in LAYER_LINEARS:
                setattr(c, name, _packed(linears[name]))
        self.d_model = d_model
        self._sizes = dict(
            d_model=d_model,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            layers=len(layers),
            eps=eps,
            scale=head_dim**-0.5,
            layer=ctypes.cast(self._layers, ctypes.POINTER(_Layer)),
        )

    def __call__(
        self,
        x: Tensor,
        *,
        lengths: Tensor,
        src_lengths: Tensor,
        group: int,
        table: Tensor | None,
        self_kv: Tensor,
        self_rows: int,
        cross_kv: Tensor,
        cross_rows: int,
        cross_positions: int,
    ) -> Tensor:
        """``x`` (R, d) contiguous float32, updated in place through every layer and returned;
        ``self_kv``/``cross_kv`` the cache's stacked (rows, L, 2, Hkv, positions, D) buffers, of which
        the first ``self_rows`` / ``cross_rows`` rows and ``cross_positions`` source positions are in
        use; ``lengths``/``src_lengths`` (R,) / (R / group,) int64; ``table`` the cache's row table."""
        rows = x.shape[0]
        if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() != 2 or x.shape[1] != self.d_model:
            raise ValueError(f"native decode layers need contiguous float32 (R, {self.d_model}) activations")
        for name, t in (("lengths", lengths), ("src_lengths", src_lengths)):
            if t.dtype != torch.int64 or not t.is_contiguous():
                raise ValueError(f"native decode layers need contiguous int64 {name}")
        if lengths.numel() < rows or src_lengths.numel() * group < rows or self_rows < rows:
            raise ValueError("native decode layers got fewer lengths or cache rows than activation rows")
        for buf in (self_kv, cross_kv):
            if buf.dtype != torch.float32 or buf.dim() != 6 or buf.stride(5) != 1:
                raise ValueError("native decode layers need float32 (rows, L, 2, Hkv, T, D) K/V buffers")
        if table is not None and (table.dtype != torch.int64 or table.stride(1) != 1 or table.shape[0] < rows):
            raise ValueError("the row table must be int64 with contiguous rows, one per query row")
        # A fresh structure per call: one decoder serves several engine threads at once (a shared
        # one let a thread run on another's rows and cache: out-of-bounds writes, a corrupted heap).
        s = _Step(**self._sizes)
        s.rows, s.group, s.threads, s.x = rows, group, torch.get_num_threads(), x.data_ptr()
        st = self_kv.stride()
        s.self = _KV(self_kv.data_ptr(), self_rows, self_kv.shape[4], st[0], st[1], st[2], st[3], st[4])
        ct = cross_kv.stride()
        s.cross = _KV(cross_kv.data_ptr(), cross_rows, cross_positions, ct[0], ct[1], ct[2], ct[3], ct[4])
        s.lengths, s.src_lengths = lengths.data_ptr(), src_lengths.data_ptr()
        s.table, s.table_stride = (table.data_ptr(), table.stride(0)) if table is not None else (None, 0)
        status = self._fn(ctypes.byref(s))
        if status == -2:
            raise ValueError("native decode layers: a row's length or a row-table entry lies outside the K/V buffers")
        if status == -3:
            raise ValueError("native decode layers: the layers' Linear shapes do not fit together")
        if status != 0:
            raise MemoryError("native decode layers could not allocate their scratch buffers")
        return x


def _packed(lin: Linear) -> _Lin:
    """A native Linear as ``ferry_lin``: float32 panels, or int8 panels with their scales and sums."""
    weights = lin._weights()
    panels, scale, colsum = weights if len(weights) == 3 else (weights[0], None, None)
    bias = lin.bias.data_ptr() if lin.bias is not None else None
    return _Lin(int(scale is not None), lin.out_features, lin.in_features, lin._relu, panels, scale, colsum, bias)


def decode_layers(
    layers: list[tuple[list[tuple[Tensor, Tensor]], dict[str, Linear]]],
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
    eps: float,
) -> DecodeLayers | None:
    """``DecodeLayers`` over these weights, or ``None`` when the kernels are unavailable."""
    lib = library()
    if lib is None:
        return None
    return DecodeLayers(lib, layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim, eps=eps)


def top_log_probs() -> TopLogProbs | None:
    """The native top-k of log-probabilities, or ``None`` when the kernels are unavailable."""
    lib = library()
    return TopLogProbs(lib) if lib is not None else None


def attention(heads: int, kv_heads: int, head_dim: int) -> Attention | None:
    """The native attention for these head sizes, or ``None`` when the kernels are unavailable."""
    lib = library()
    return Attention(lib, heads, kv_heads, head_dim) if lib is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build ferry's native CPU kernels ahead of time.")
    parser.add_argument(
        "--build",
        metavar="DIR",
        nargs="?",
        const=str(Path(__file__).parent),
        help="compile into DIR (default: beside this module, where a wheel or image finds it first)",
    )
    args = parser.parse_args(argv)
    if args.build is None:
        parser.error("nothing to do: pass --build [DIR]")
    print(build(Path(args.build)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
