"""One decode step as one function over plain tensors: no ``nn.Module`` dispatch per step.

``Transformer.decode_step`` walks the module tree: per step and decoder layer it makes about a dozen
module calls (each through ``Module.__call__`` and several ``Module.__getattr__`` lookups) plus the
closures of ``DecoderLayer.step``. With a 256-wide model those fixed costs are ~1 ms per step, as
much as the GEMMs of a few rows. ``LeanDecoder`` reads every weight out of a model that
``prepare_for_inference`` rewrote (fused Q/K/V and cross K/V, packed or int8 Linears) once, then runs
the same operations in the same order on 2-D ``(R, d_model)`` activations, so its logits equal the
module path's (the tests compare them).

It implements ``decode_step(tokens, cache) -> logits`` (the search's ``StepModel``) over the same
``DecoderCache``, so search, beam reorders and continuous batching are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from . import native
from .attention import Attention
from .cache import DecoderCache
from .fastpath import NativeInt8Linear, PackedLinear, direct_op, fused_activation, gemm_fn
from .layers import DecoderLayer, EncoderLayer
from .transformer import Transformer

Linear = Callable[[Tensor], Tensor]
"""``(N, K) -> (N, M)``: one Linear (activation fused where the fast path fused it)."""
Residual = Callable[[Tensor, Tensor], Tensor]
"""``(y, x) -> x + linear(y)``: a Linear and its residual connection. A native Linear adds into ``x``
in place (no separate add, no new tensor) and returns it, so ``x`` must be the caller's own."""
Attend = Callable[[int, Tensor], Tensor]
"""One decode step's attention of layer ``i``: projected queries (and K/V) -> ``(R, H D)``."""


def linear_fn(module: nn.Module, *, relu: bool = False) -> Linear:
    """A plain function computing ``module`` on 2-D input, calling the GEMM op directly.

    ``relu=True`` (int8 Linears only) returns ``relu(module(x))`` in one fused op."""
    if isinstance(module, PackedLinear):
        return gemm_fn(module)
    if isinstance(module, NativeInt8Linear):
        return module.native
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    if _is_int8(module):
        # What DynamicLinear.forward calls, minus the module and Python-dispatch overhead (~10 % of an
        # int8 step); reduce_range follows the module's serialisation version as forward does.
        packed = module._packed_params._packed_params
        reduce_range = module.version is not None and module.version >= 4
        op = direct_op(
            (torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic).default
        )
        return lambda x: op(x, packed, reduce_range)
    if relu:
        raise ValueError(f"no fused ReLU for {type(module).__name__}")
    return module.forward  # anything else: skip only __call__'s hooks


def residual_fn(module: nn.Module) -> Residual:
    """``(y, x) -> x + module(y)`` (see ``Residual``)."""
    fn = linear_fn(module)
    if isinstance(fn, native.Linear):
        return fn.add_to
    return lambda y, x: x + fn(y)


def fusable_relu(module: nn.Module, activation: Callable[[Tensor], Tensor]) -> bool:
    """Whether ``linear_fn(module, relu=True)`` can fold ``activation`` into the GEMM."""
    return activation is F.relu and _is_int8(module)


def _is_int8(module: nn.Module) -> TypeGuard[DynamicLinear]:
    """A dynamic int8 Linear (the fast path's ``quantize=True``)."""
    return isinstance(module, DynamicLinear) and module._packed_params.dtype == torch.qint8


def _layer_norm(module: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """``F.layer_norm`` with the module's parameters, or ``None`` for an identity."""
    if isinstance(module, nn.Identity):
        return None
    if not isinstance(module, nn.LayerNorm):
        return module.forward
    shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
    return lambda x: F.layer_norm(x, shape, weight, bias, eps)


def residual_norm(res: nn.Module) -> Callable[[Tensor], Tensor]:
    """The layer norm of a ``_Residual`` block as a function."""
    fn = _layer_norm(res.norm)  # type: ignore[arg-type]
    assert fn is not None
    return fn


@dataclass(frozen=True)
class FeedForwardBlock:
    """A layer's feed-forward sub-block on 2-D activations ``(N, d)``, residual and norm included."""

    pre: bool
    """Pre-norm (``x + f(norm(x))``) or post-norm (``norm(x + f(x))``)."""
    norm: Callable[[Tensor], Tensor]
    fc1: Linear
    activation: Callable[[Tensor], Tensor] | None
    """Applied after ``fc1`` unless the fast path fused it into the GEMM (``None``)."""
    fc2: Residual
    """``fc2`` and the block's residual connection."""

    @classmethod
    def of(cls, layer: EncoderLayer | DecoderLayer, *, pre: bool) -> FeedForwardBlock:
        activation = layer.ffn.activation
        fold_relu = fusable_relu(layer.ffn.fc1, activation)
        return cls(
            pre=pre,
            norm=residual_norm(layer.ffn_res),
            fc1=linear_fn(layer.ffn.fc1, relu=fold_relu),
            activation=None if activation is fused_activation or fold_relu else activation,
            fc2=residual_fn(layer.ffn.fc2),
        )

    def __call__(self, x: Tensor) -> Tensor:
        """x (N, d), which a native ``fc2`` updates in place -> (N, d)."""
        y = self.norm(x) if self.pre else x
        y = self.fc1(y)  # (N, F)
        if self.activation is not None:
            y = self.activation(y)
        x = self.fc2(y, x)  # x + fc2(y), (N, d)
        return x if self.pre else self.norm(x)


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights as functions."""

    self_norm: Callable[[Tensor], Tensor]
    qkv: Linear
    self_out: Residual
    cross_norm: Callable[[Tensor], Tensor]
    cross_q: Linear
    cross_out: Residual
    ffn: FeedForwardBlock


class LeanDecoder:
    """``decode_step`` of a prepared ``Transformer`` without module dispatch (module docstring)."""

    def __init__(self, model: Transformer, *, native_attention: bool = True) -> None:
        cfg = model.cfg
        self.model = model
        self.pre = cfg.norm_position == "pre"
        self.heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.gqa = cfg.kv_heads != cfg.n_heads
        self.max_positions = cfg.max_positions
        self.embed: Tensor = model.tgt_embed.weight
        self.embed_scale = model.embed_scale
        self.positions: Tensor = model.tgt_positions.table
        self.final_norm = _layer_norm(model.decoder_norm)
        self.output = linear_fn(model.output)
        self.logits_bias = model.logits_bias
        self.layers = [self._layer(layer) for layer in model.decoder_layers]  # type: ignore[arg-type]
        cpu_fp32 = self.embed.device.type == "cpu" and self.embed.dtype == torch.float32
        use = native_attention and cpu_fp32
        self.attend = native.attention(self.heads, self.kv_heads, self.head_dim) if use else None
        """Both attentions in native code (``model/native.py``), or ``None``: torch's SDPA with masks."""
        self.fused = self._fused_layers(model) if self.attend is not None and self.pre else None
        """Every layer of a step in one native call (``model/step.c``) when the whole layer is native:
        pre-norm LayerNorms, native Linears (ReLU fused), native attention; else ``None``."""

    @staticmethod
    def supports(model: Transformer) -> bool:
        """Whether ``model`` has the fused projections ``prepare_for_inference`` adds."""
        return all(
            layer.self_attn.qkv_proj is not None  # type: ignore[union-attr]
            for layer in model.decoder_layers
        )

    def _layer(self, layer: DecoderLayer) -> _Layer:
        self_attn: Attention = layer.self_attn
        cross: Attention = layer.cross_attn
        if self_attn.qkv_proj is None:
            raise ValueError("LeanDecoder needs a model rewritten by prepare_for_inference (fused Q/K/V)")

        return _Layer(
            self_norm=residual_norm(layer.self_attn_res),
            qkv=linear_fn(self_attn.qkv_proj),
            self_out=residual_fn(self_attn.out_proj),
            cross_norm=residual_norm(layer.cross_attn_res),
            cross_q=linear_fn(cross.q_proj),
            cross_out=residual_fn(cross.out_proj),
            ffn=FeedForwardBlock.of(layer, pre=self.pre),
        )

    def _fused_layers(self, model: Transformer) -> native.DecodeLayers | None:
        specs: list[tuple[list[tuple[Tensor, Tensor]], dict[str, native.Linear]]] = []
        eps: float | None = None
        for block in model.decoder_layers:
            layer: DecoderLayer = block  # type: ignore[assignment]
            norms = []
            for res in (layer.self_attn_res, layer.cross_attn_res, layer.ffn_res):
                norm = res.norm
                if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
                    return None
                if eps is not None and norm.eps != eps:
                    return None
                eps = norm.eps
                norms.append((norm.weight.detach().contiguous(), norm.bias.detach().contiguous()))
            if layer.ffn.activation is not fused_activation:
                return None  # an activation the fc1 GEMM does not apply (GELU)
            modules = {
                "qkv": layer.self_attn.qkv_proj,
                "self_out": layer.self_attn.out_proj,
                "cross_q": layer.cross_attn.q_proj,
                "cross_out": layer.cross_attn.out_proj,
                "fc1": layer.ffn.fc1,
                "fc2": layer.ffn.fc2,
            }
            linears = {name: linear_fn(m) for name, m in modules.items() if m is not None}
            if len(linears) != len(modules) or not all(isinstance(f, native.Linear) for f in linears.values()):
                return None
            specs.append((norms, linears))  # type: ignore[arg-type]
        if eps is None:
            return None
        return native.decode_layers(specs, heads=self.heads, kv_heads=self.kv_heads, head_dim=self.head_dim, eps=eps)

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed one token per row (R,) at each row's own position; returns logits (R, V)."""
        if cache.max_length >= self.max_positions:
            raise ValueError(f"decoding past max_positions={self.max_positions}; lower max_length")
        if self.fused is not None:
            return self._fused_step(tokens, cache, self.fused)
        if self.attend is not None:
            self_attention, cross_attention = self._native_attention(cache, self.attend)
        else:
            self_attention, cross_attention = self._torch_attention(cache, tokens.shape[0])
        pre = self.pre
        x = self._embed(tokens, cache)  # (R, d)
        for i, w in enumerate(self.layers):
            y = w.self_norm(x) if pre else x
            x = w.self_out(self_attention(i, w.qkv(y)), x)  # x + out(attention), (R, d)
            if not pre:
                x = w.self_norm(x)
            y = w.cross_norm(x) if pre else x
            x = w.cross_out(cross_attention(i, w.cross_q(y)), x)  # (R, d)
            if not pre:
                x = w.cross_norm(x)
            x = w.ffn(x)  # feed-forward, (R, d)
        cache.advance()
        return self._logits(x)

    def _fused_step(self, tokens: Tensor, cache: DecoderCache, fused: native.DecodeLayers) -> Tensor:
        """``decode_step`` with every layer in one native call (``model/step.c``)."""
        cache.reserve_step()
        x = self._embed(tokens, cache)  # (R, d), a new tensor, updated in place by the layers
        self_kv, cross_kv = cache.buffers
        cross = cache.cross_k[0]  # (N, Hkv, S, D) view: the rows and source positions in use
        src_lengths = cache.src_lengths if cache.src_lengths.is_contiguous() else cache.src_lengths.contiguous()
        fused(
            x,
            lengths=cache.lengths,
            src_lengths=src_lengths,
            group=cache.group,
            table=cache.row_table,
            self_kv=self_kv,
            self_rows=cache.num_rows,
            cross_kv=cross_kv,
            cross_rows=cross.shape[0],
            cross_positions=cross.shape[2],
        )
        cache.advance()
        return self._logits(x)

    def _native_attention(self, cache: DecoderCache, attend: native.Attention) -> tuple[Attend, Attend]:
        """This step's attentions in ``model/attend.c``: each row stores its K/V and attends over its
        own ``lengths`` (no masks, no padded positions read), through the cache's row table when it
        has one (beam reorders that move no K/V)."""
        cache.reserve_step()
        qd, kd = self.heads * self.head_dim, self.kv_heads * self.head_dim
        g, lengths, src_lengths, table = cache.group, cache.lengths, cache.src_lengths, cache.row_table

        def self_attention(i: int, qkv: Tensor) -> Tensor:  # (R, (H + 2 Hkv) D) -> (R, H D)
            k_new, v_new = qkv[:, qd : qd + kd], qkv[:, qd + kd :]  # (R, Hkv D) each
            k, v = cache.self_k[i], cache.self_v[i]  # (R, Hkv, T_cap, D) buffers, written here
            return attend(qkv, k, v, lengths, extra=1, new_k=k_new, new_v=v_new, table=table)

        def cross_attention(i: int, q: Tensor) -> Tensor:  # (R, H D) -> (R, H D)
            return attend(q, cache.cross_k[i], cache.cross_v[i], src_lengths, group=g)

        return self_attention, cross_attention

    def _torch_attention(self, cache: DecoderCache, r: int) -> tuple[Attend, Attend]:
        """This step's attentions with torch's SDPA over the padded cache and the step's masks."""
        self_mask, cross_mask = cache.begin_step()
        h, hkv, d = self.heads, self.kv_heads, self.head_dim
        qd, kd = h * d, hkv * d
        g, gqa = cache.group, self.gqa
        sdpa = F.scaled_dot_product_attention

        def self_attention(i: int, qkv: Tensor) -> Tensor:  # (R, (H + 2 Hkv) D) -> (R, H D)
            q = qkv[:, :qd].view(r, h, 1, d)  # (R, H, 1, D)
            k, v = cache.write(i, qkv[:, qd : qd + kd].view(r, hkv, 1, d), qkv[:, qd + kd :].view(r, hkv, 1, d))
            return sdpa(q, k, v, attn_mask=self_mask, enable_gqa=gqa).reshape(r, qd)  # from (R, H, 1, D)

        def cross_attention(i: int, q: Tensor) -> Tensor:  # (R, H D) -> (R, H D)
            # the ``g`` beams sharing one encoder row are ``g`` queries of it
            if g == 1:
                q = q.view(r, h, 1, d)  # (R, H, 1, D)
            else:
                q = q.view(r // g, g, h, d).transpose(1, 2)  # (N, H, g, D)
            a = sdpa(q, cache.cross_k[i], cache.cross_v[i], attn_mask=cross_mask, enable_gqa=gqa)  # (N, H, g, D)
            if g != 1:
                a = a.transpose(1, 2)  # (N, g, H, D)
            return a.reshape(r, qd)

        return self_attention, cross_attention

    def _embed(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Token embeddings plus each row's position: (R,) -> (R, d)."""
        return F.embedding(tokens, self.embed) * self.embed_scale + self.positions[cache.lengths]

    def _logits(self, x: Tensor) -> Tensor:
        """Final norm and output projection: (R, d) -> (R, V)."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.output(x)  # (R, V)
        if self.logits_bias is not None:
            logits = logits + self.logits_bias
        return logits
