"""Encoder and decoder layers (post-norm or pre-norm) and the feed-forward block."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention
from .cache import DecoderCache
from .config import TransformerConfig

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu}


class FeedForward(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.ffn_bias)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.ffn_bias)
        self.activation = ACTIVATIONS[cfg.activation]
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.activation(self.fc1(x))
        if self.training:  # eval skips the no-op Dropout call (Python overhead on every decode step)
            h = self.activation_dropout(h)
        return self.fc2(h)


class _Residual(nn.Module):
    """``x + dropout(f(x))`` with the LayerNorm before f (pre-norm) or after the add (post-norm)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, block: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre:
            h = block(self.norm(x))
            return x + (self.dropout(h) if self.training else h)
        h = block(x)
        return self.norm(x + (self.dropout(h) if self.training else h))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.self_attn_res = _Residual(cfg)
        self.ffn = FeedForward(cfg)
        self.ffn_res = _Residual(cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.self_attn_res(x, lambda h: self.self_attn(h, mask=mask))
        return self.ffn_res(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.self_attn_res = _Residual(cfg)
        self.cross_attn = Attention(cfg)
        self.cross_attn_res = _Residual(cfg)
        self.ffn = FeedForward(cfg)
        self.ffn_res = _Residual(cfg)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Teacher-forced pass over a whole target prefix: x (B, T, d), memory (B, S, d)."""
        x = self.self_attn_res(x, lambda h: self.self_attn(h, is_causal=True))
        x = self.cross_attn_res(x, lambda h: self.cross_attn(h, memory, mask=memory_mask))
        return self.ffn_res(x, self.ffn)

    def step(self, x: Tensor, cache: DecoderCache, layer: int, self_mask: Tensor | None, cross_mask: Tensor) -> Tensor:
        """One decoding position per row: x (R, 1, d). Writes this position's K/V into ``cache``;
        the masks come from ``cache.begin_step()``, built once per step for all layers. The ``group``
        beams sharing one cross-attention row attend to it as ``group`` queries of one sequence."""

        def self_block(h: Tensor) -> Tensor:
            q, k_new, v_new = self.self_attn.project_qkv(h)  # (R, H, 1, D), (R, Hkv, 1, D) ×2
            k, v = cache.write(layer, k_new, v_new)
            return self.self_attn.attend(q, k, v, mask=self_mask)

        def cross_block(h: Tensor) -> Tensor:
            q = self.cross_attn.project_q(h)  # (R, H, 1, D)
            g = cache.group
            if g == 1:
                return self.cross_attn.attend(q, cache.cross_k[layer], cache.cross_v[layer], mask=cross_mask)
            r, heads, _, d = q.shape
            q = q.transpose(1, 2).reshape(r // g, g, heads, d).transpose(1, 2)  # (N, H, g, D): beams as queries
            out = self.cross_attn.attend(q, cache.cross_k[layer], cache.cross_v[layer], mask=cross_mask)  # (N, g, d)
            return out.reshape(r, 1, out.shape[-1])  # (R, 1, d)

        x = self.self_attn_res(x, self_block)
        x = self.cross_attn_res(x, cross_block)
        return self.ffn_res(x, self.ffn)
