"""Multi-head / grouped-query attention on top of ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TransformerConfig


class Attention(nn.Module):
    """Attention with separate q/k/v projections so that K/V can be computed (and cached) apart
    from the queries: decoder self-attention writes one new K/V row per step, cross-attention
    computes K/V once from encoder memory."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.attention_dropout
        kv_dim = self.n_kv_heads * self.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.d_model, kv_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.d_model, kv_dim, bias=cfg.attention_bias)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.attention_bias)
        self.qkv_proj: nn.Module | None = None
        """Q, K and V in one GEMM (set by ``fastpath.fuse_projections`` for self-attention)."""
        self.kv_proj: nn.Module | None = None
        """K and V in one GEMM (set by ``fastpath.fuse_projections`` for cross-attention)."""

    def project_q(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)  # (B, T, H, D)
        return q.transpose(1, 2)  # (B, H, T, D)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, s, _ = x.shape
        if self.kv_proj is not None:
            kv = self.kv_proj(x).view(b, s, 2, self.n_kv_heads, self.head_dim)  # (B, S, 2, Hkv, D)
            return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # (B, Hkv, S, D) each
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim)  # (B, S, Hkv, D)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim)  # (B, S, Hkv, D)
        return k.transpose(1, 2), v.transpose(1, 2)  # (B, Hkv, S, D) each

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention projections: q (B, H, T, D), k and v (B, Hkv, T, D)."""
        if self.qkv_proj is None:
            k, v = self.project_kv(x)
            return self.project_q(x), k, v
        b, t, _ = x.shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv_proj(x)  # (B, T, (H + 2 Hkv) D)
        q, k, v = qkv.split([h * d, hkv * d, hkv * d], dim=-1)
        q = q.view(b, t, h, d).transpose(1, 2)  # (B, H, T, D)
        k = k.view(b, t, hkv, d).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(b, t, hkv, d).transpose(1, 2)  # (B, Hkv, T, D)
        return q, k, v

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """q: (B, H, T, D); k, v: (B, Hkv, S, D); mask: bool, broadcastable to (B, H, T, S),
        True where a query may look. Returns (B, T, d_model)."""
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, H, T, D)
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, T, d_model)
        return self.out_proj(out)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Full-sequence attention (training, encoder): keys come from ``memory`` or ``x``."""
        if memory is None:
            q, k, v = self.project_qkv(x)
        else:
            q = self.project_q(x)
            k, v = self.project_kv(memory)
        return self.attend(q, k, v, mask=mask, is_causal=is_causal)


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, 1, 1, max_len) bool, True on real tokens."""
    positions = torch.arange(max_len, device=lengths.device)
    return (positions[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
