"""Decode steps with static shapes, replayed as CUDA graphs on a GPU.

``StaticStep`` runs one decode step over *padded* rows (a row bucket: the next power of two) and the
cache's full buffers (all ``T_cap`` self-attention and ``S_cap`` source positions, masked), so the
step's shapes and tensor addresses only change when the cache reallocates. On CUDA,
``GraphedDecoder`` captures that step once per (bucket, buffers) and replays it: one launch per step
instead of hundreds, which is what makes small-batch GPU decoding fast. Inputs reach the graph through
static tensors filled from pinned host buffers (non-blocking copies).

On CPU ``StaticStep`` runs eagerly: the tests compare it with ``Transformer.decode_step`` there, and
the CUDA tests (skipped without a GPU) compare the graph replay with it.

``GraphedDecoder`` implements ``decode_step(tokens, cache) -> logits`` (the search's ``StepModel``), so
``run_search`` and the server's runner can use it in place of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .cache import DecoderCache
from .lean_step import LeanDecoder
from .transformer import Transformer


def bucket(rows: int, *, smallest: int = 8) -> int:
    """Padded row count: the next power of two, at least ``smallest``."""
    b = smallest
    while b < rows:
        b *= 2
    return b


class _StaticView:
    """The cache surface ``DecoderLayer.step`` uses, over the first ``rows`` base rows and every
    position: writes go to each row's own position (padding rows write at 0, never read)."""

    def __init__(self, cache: DecoderCache, rows: int, lengths: Tensor) -> None:
        self.group = cache.group
        base = cache._self  # (R_cap, L, 2, Hkv, T_cap, D)
        cross = cache._cross  # (N_cap, L, 2, Hkv, S_cap, D)
        self.self_k = [base[:rows, i, 0] for i in range(base.shape[1])]  # (Rb, Hkv, T_cap, D)
        self.self_v = [base[:rows, i, 1] for i in range(base.shape[1])]
        n = rows // self.group
        self.cross_k = [cross[:n, i, 0] for i in range(cross.shape[1])]  # (Nb, Hkv, S_cap, D)
        self.cross_v = [cross[:n, i, 1] for i in range(cross.shape[1])]
        self._rows = torch.arange(rows, device=base.device)
        self._lengths = lengths

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.self_k[layer][self._rows, :, self._lengths] = k[:, :, 0]
        self.self_v[layer][self._rows, :, self._lengths] = v[:, :, 0]
        return self.self_k[layer], self.self_v[layer]


@dataclass
class _Inputs:
    """Static input tensors of one bucket (the graph reads them; each step refills them)."""

    tokens: Tensor
    """(Rb,) long."""
    lengths: Tensor
    """(Rb,) long: each row's write position."""
    self_bias: Tensor
    """(Rb, 1, 1, T_cap) additive mask."""
    cross_bias: Tensor
    """(Nb, 1, 1, S_cap) additive mask."""
    host: dict[str, Tensor] = field(default_factory=dict)
    """Pinned host staging buffers (CUDA only)."""


class StaticStep:
    """One padded, full-capacity decode step of ``model`` over ``cache`` (see the module docstring)."""

    def __init__(self, model: Transformer) -> None:
        self.model = model

    def make_inputs(self, cache: DecoderCache, rows: int) -> _Inputs:
        dev, dtype = cache._self.device, cache._self.dtype
        n = rows // cache.group
        inputs = _Inputs(
            tokens=torch.full((rows,), self.model.cfg.pad_id, dtype=torch.long, device=dev),
            lengths=torch.zeros(rows, dtype=torch.long, device=dev),
            self_bias=torch.zeros(rows, 1, 1, cache.capacity, dtype=dtype, device=dev),
            cross_bias=torch.zeros(n, 1, 1, cache.source_capacity, dtype=dtype, device=dev),
        )
        if dev.type == "cuda":
            for name in ("tokens", "lengths", "self_bias", "cross_bias"):
                t = getattr(inputs, name)
                inputs.host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return inputs

    def fill(self, inputs: _Inputs, tokens: Tensor, cache: DecoderCache) -> None:
        """Host-side masks and positions for this step (no device sync), copied into ``inputs``."""
        r, g = cache.num_rows, cache.group
        rows, t_cap = inputs.tokens.shape[0], inputs.self_bias.shape[-1]
        lengths = cache.lengths_host + [0] * (rows - r)
        positions = torch.arange(t_cap)
        self_bias = torch.where(positions[None, :] <= torch.tensor(lengths)[:, None], 0.0, float("-inf"))
        src = cache.src_lengths_host[::g] + [1] * ((rows - r) // g)
        s_cap = inputs.cross_bias.shape[-1]
        cross_bias = torch.where(torch.arange(s_cap)[None, :] < torch.tensor(src)[:, None], 0.0, float("-inf"))
        values = {
            "lengths": torch.tensor(lengths),
            "self_bias": self_bias[:, None, None, :],  # (Rb, 1, 1, T_cap)
            "cross_bias": cross_bias[:, None, None, :],  # (Nb, 1, 1, S_cap)
        }
        inputs.tokens[:r].copy_(tokens, non_blocking=True)
        inputs.tokens[r:].fill_(self.model.cfg.pad_id)
        for name, value in values.items():
            target = getattr(inputs, name)
            staging = inputs.host.get(name)
            if staging is not None:
                staging.copy_(value)
                target.copy_(staging, non_blocking=True)
            else:
                target.copy_(value)

    def run(self, inputs: _Inputs, cache: DecoderCache) -> Tensor:
        """The step itself: logits (Rb, V). Only static tensors and the cache's base buffers."""
        model = self.model
        rows = inputs.tokens.shape[0]
        view = _StaticView(cache, rows, inputs.lengths)
        x = model.tgt_embed(inputs.tokens[:, None]) * model.embed_scale  # (Rb, 1, d)
        x = x + model.tgt_positions(inputs.lengths)[:, None, :]  # (Rb, 1, d)
        for i, layer in enumerate(model._decoder()):
            x = layer.step(x, view, i, inputs.self_bias, inputs.cross_bias)  # type: ignore[arg-type]
        return model._logits(model.decoder_norm(x))[:, 0]  # (Rb, V)

    def prepare(self, cache: DecoderCache) -> int:
        """Make room for one more position and the padded rows; returns the padded row count."""
        if cache.max_length >= self.model.cfg.max_positions:
            raise ValueError(f"decoding past max_positions={self.model.cfg.max_positions}; lower max_length")
        rows = bucket(cache.num_sources) * cache.group
        cache.ensure_capacity(cache.max_length + 1)
        if cache.row_capacity < rows:
            cache._reallocate(rows, cache.capacity, cache.source_capacity)
        return rows

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Eager padded step (CPU reference of the graphed one)."""
        rows = self.prepare(cache)
        inputs = self.make_inputs(cache, rows)
        self.fill(inputs, tokens, cache)
        logits = self.run(inputs, cache)[: cache.num_rows]
        cache.advance()
        return logits


class GraphedDecoder(StaticStep):
    """``decode_step`` replayed from CUDA graphs, one per (row bucket, cache buffers, capacities)."""

    def __init__(self, model: Transformer, *, max_graphs: int = 16) -> None:
        super().__init__(model)
        if next(model.parameters()).device.type != "cuda":
            raise ValueError("GraphedDecoder needs a model on a CUDA device")
        self.max_graphs = max_graphs
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, _Inputs, Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle()

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        rows = self.prepare(cache)
        key = (
            rows,
            cache.group,
            cache._self.data_ptr(),
            cache._cross.data_ptr(),
            cache.capacity,
            cache.source_capacity,
        )
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(cache, rows, tokens)
            if len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = entry
        graph, inputs, out = entry
        self.fill(inputs, tokens, cache)
        graph.replay()
        cache.advance()
        return out[: cache.num_rows]

    def _capture(self, cache: DecoderCache, rows: int, tokens: Tensor) -> tuple[torch.cuda.CUDAGraph, _Inputs, Tensor]:
        inputs = self.make_inputs(cache, rows)
        self.fill(inputs, tokens, cache)
        # Warm up on a side stream (allocator, cuBLAS handles) with this step's real inputs: it writes
        # the same K/V the replay writes next.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.run(inputs, cache)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.run(inputs, cache)
        return graph, inputs, out


def decode_stepper(model: Transformer) -> Transformer | GraphedDecoder | LeanDecoder:
    """What to pass as ``run_search``'s model: graph replay on CUDA; on CPU the lean step when
    ``prepare_for_inference`` rewrote the model, else the model itself (the eager reference)."""
    if next(model.parameters()).device.type == "cuda":
        return GraphedDecoder(model)
    if LeanDecoder.supports(model):
        return LeanDecoder(model)
    return model
