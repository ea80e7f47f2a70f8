"""The encoder over packed tokens: a batch's padding is never multiplied.

``Transformer.encode`` runs every Linear, layer norm and feed-forward on the padded ``(B, S, d)``
batch, so a batch of one long and many short sentences spends most of its GEMM time on padding (a
sorted Multi30k batch of 32 carries ~17 % padding; the serving engine admits sentences of any lengths
together). ``LeanEncoder`` keeps the ``T`` real tokens as one ``(T, d)`` matrix: every position-wise
operation (Q/K/V, output projection, feed-forward, norms, the decoder's cross-attention K/V) runs on
``T`` rows only, and only attention sees the padded layout (scattered in, gathered back out). Its
K/V equal the module path's on every real position (tests; within GEMM rounding, since a GEMM of other
rows may block its sums differently); padding positions hold zeros, which the cross mask hides.

It reads the weights of a model ``prepare_for_inference`` rewrote (fused Q/K/V and cross K/V), as
``LeanDecoder`` does, and returns what ``DecoderCache`` is built from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native
from .attention import Attention, padding_mask
from .layers import EncoderLayer
from .lean_step import FeedForwardBlock, Linear, Residual, _layer_norm, linear_fn, residual_fn, residual_norm
from .transformer import Transformer


@dataclass(frozen=True)
class _EncoderLayerFns:
    """One encoder layer's weights as functions."""

    self_norm: Callable[[Tensor], Tensor]
    qkv: Linear
    self_out: Residual
    ffn: FeedForwardBlock


class LeanEncoder:
    """``encode`` of a prepared ``Transformer`` on packed tokens (module docstring)."""

    def __init__(self, model: Transformer, *, native_attention: bool = True) -> None:
        cfg = model.cfg
        self.pre = cfg.norm_position == "pre"
        self.heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.gqa = cfg.kv_heads != cfg.n_heads
        self.max_positions = cfg.max_positions
        self.embed: Tensor = model.src_embed.weight
        self.embed_scale = model.embed_scale
        self.positions: Tensor = model.src_positions.table
        self.final_norm = _layer_norm(model.encoder_norm)
        self.layers = [self._layer(layer) for layer in model.encoder_layers]  # type: ignore[arg-type]
        self.cross_kv = [linear_fn(layer.cross_attn.kv_proj) for layer in model.decoder_layers]  # type: ignore[union-attr, arg-type]
        use = native_attention and self.embed.dtype == torch.float32
        self.attend = native.attention(self.heads, self.kv_heads, self.head_dim) if use else None
        """Self-attention in native code on the packed tokens themselves (no padded layout at all), or
        ``None``: torch's SDPA on the padded layout."""

    @staticmethod
    def supports(model: Transformer) -> bool:
        """Whether ``model`` has the fused projections ``prepare_for_inference`` adds."""
        return all(layer.self_attn.qkv_proj is not None for layer in model.encoder_layers) and all(  # type: ignore[union-attr]
            layer.cross_attn.kv_proj is not None  # type: ignore[union-attr]
            for layer in model.decoder_layers
        )

    def _layer(self, layer: EncoderLayer) -> _EncoderLayerFns:
        attn: Attention = layer.self_attn
        if attn.qkv_proj is None:
            raise ValueError("LeanEncoder needs a model rewritten by prepare_for_inference (fused Q/K/V)")
        return _EncoderLayerFns(
            self_norm=residual_norm(layer.self_attn_res),
            qkv=linear_fn(attn.qkv_proj),
            self_out=residual_fn(attn.out_proj),
            ffn=FeedForwardBlock.of(layer, pre=self.pre),
        )

    def encode(self, src_ids: Tensor, lengths: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """src_ids (B, S) padded, lengths (B,) -> every decoder layer's cross-attention K and V,
        (B, Hkv, S, D) each, zeros past each row's length."""
        cross = self.encode_stacked(src_ids, lengths)  # (B, L, 2, Hkv, S, D)
        layers = range(cross.shape[1])
        return [cross[:, layer, 0] for layer in layers], [cross[:, layer, 1] for layer in layers]

    def encode_stacked(self, src_ids: Tensor, lengths: Tensor, *, zeroed: bool = True) -> Tensor:
        """``encode`` in the decoder cache's layout, (B, L, 2, Hkv, S, D) in one buffer
        (``DecoderCache.over`` takes it as is); padding positions hold zeros, or are left
        uninitialised with ``zeroed=False`` (for a decoder that never reads them)."""
        b, s = src_ids.shape
        if s > self.max_positions:
            raise ValueError(f"source of {s} tokens exceeds max_positions={self.max_positions}")
        h, hkv, d = self.heads, self.kv_heads, self.head_dim
        pre = self.pre
        mask = padding_mask(lengths, s)  # (B, 1, 1, S)
        real = mask.reshape(b * s).nonzero().squeeze(1)  # (T,) flat (row, position) index of real tokens
        x = F.embedding(src_ids.reshape(b * s).index_select(0, real), self.embed) * self.embed_scale
        x = x + self.positions.index_select(0, real % s)  # (T, d)
        packed = _PackedAttention.of(lengths, s) if self.attend is not None else None
        for w in self.layers:
            y = w.self_norm(x) if pre else x
            if packed is not None:
                assert self.attend is not None
                a = packed.attend(self.attend, w.qkv(y), h * d, hkv * d)  # (T, H D)
            else:
                qkv = _unpack(w.qkv(y), real, b, s)  # (B, S, (H + 2 Hkv) D)
                q = qkv[..., : h * d].view(b, s, h, d).transpose(1, 2)  # (B, H, S, D)
                k = qkv[..., h * d : (h + hkv) * d].view(b, s, hkv, d).transpose(1, 2)  # (B, Hkv, S, D)
                v = qkv[..., (h + hkv) * d :].view(b, s, hkv, d).transpose(1, 2)  # (B, Hkv, S, D)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.gqa)  # (B, H, S, D)
                a = a.transpose(1, 2).reshape(b * s, h * d).index_select(0, real)  # (T, H D)
            x = w.self_out(a, x)  # x + out(a), (T, d)
            if not pre:
                x = w.self_norm(x)
            x = w.ffn(x)  # feed-forward, (T, d)
        if self.final_norm is not None:
            x = self.final_norm(x)
        shape = (b, len(self.cross_kv), 2, hkv, s, d)
        cross = x.new_zeros(shape) if zeroed else x.new_empty(shape)  # (B, L, 2, Hkv, S, D)
        row, position = real // s, real % s  # (T,) each
        for layer, kv_proj in enumerate(self.cross_kv):
            kv = kv_proj(x).view(-1, 2, hkv, d)  # (T, 2, Hkv, D)
            cross[:, layer].permute(0, 3, 1, 2, 4)[row, position] = kv  # scattered into (B, S, 2, Hkv, D)
        return cross


@dataclass(frozen=True)
class _PackedAttention:
    """Where each packed token's sentence lies, for the native attention to read K/V straight out of
    the packed ``(T, (H + 2 Hkv) D)`` projections: token ``r`` attends to packed rows
    ``table[r, :lengths[r]]`` (its sentence's tokens)."""

    lengths: Tensor
    """(T,) int64: the length of each token's sentence."""
    table: Tensor
    """(T, S) int64: the packed row of each position of each token's sentence (the kernel's row table)."""

    @classmethod
    def of(cls, lengths: Tensor, width: int) -> _PackedAttention:
        lengths = lengths.to(torch.int64)
        starts = torch.cumsum(lengths, 0) - lengths  # (B,) first packed row of each sentence
        sentence = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)  # (T,)
        table = starts.index_select(0, sentence)[:, None] + torch.arange(width)[None, :]  # (T, S)
        return cls(lengths.index_select(0, sentence).contiguous(), table)

    def attend(self, attend: native.Attention, qkv: Tensor, qd: int, kd: int) -> Tensor:
        """Self-attention of packed tokens: qkv (T, (H + 2 Hkv) D) -> (T, H D)."""
        rows, row_stride = qkv.shape[0], qkv.stride(0)
        d = attend.head_dim
        # K and V as (T, Hkv, 1, D) views (the table names the packed row of every position, so the
        # position stride is 0).
        k = qkv.as_strided((rows, kd // d, 1, d), (row_stride, d, 0, 1), qkv.storage_offset() + qd)
        v = qkv.as_strided((rows, kd // d, 1, d), (row_stride, d, 0, 1), qkv.storage_offset() + qd + kd)
        return attend(qkv, k, v, self.lengths, table=self.table, positions=self.table.shape[1])


def _unpack(packed: Tensor, real: Tensor, b: int, s: int) -> Tensor:
    """(T, C) rows of the real tokens -> (B, S, C), zeros on padding."""
    out = packed.new_zeros(b * s, packed.shape[1])  # (B S, C)
    return out.index_copy_(0, real, packed).view(b, s, packed.shape[1])  # (B, S, C)


def lean_encoder(model: Transformer) -> LeanEncoder | None:
    """A ``LeanEncoder`` for a prepared CPU model, else ``None`` (use ``Transformer.encode``)."""
    if next(model.parameters()).device.type != "cpu" or not LeanEncoder.supports(model):
        return None
    return LeanEncoder(model)
