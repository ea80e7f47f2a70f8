"""The encoder–decoder Transformer: ``encode`` once, then ``decode_step`` through a ``DecoderCache``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import padding_mask
from .cache import DecoderCache
from .config import TransformerConfig
from .layers import DecoderLayer, EncoderLayer
from .positions import PositionEncoding


@dataclass
class EncoderOutput:
    """Encoder memory for a padded batch."""

    memory: Tensor
    """(B, S, d_model) hidden states; rows past ``lengths`` are padding."""
    lengths: Tensor
    """(B,) real source lengths (tokens, EOS included)."""
    mask: Tensor
    """(B, 1, 1, S) bool, True on real tokens."""


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab_size, cfg.d_model)
        self.src_positions = PositionEncoding(cfg)
        self.tgt_positions = PositionEncoding(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        pre = cfg.norm_position == "pre"
        self.encoder_norm: nn.Module = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if pre else nn.Identity()
        self.decoder_norm: nn.Module = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if pre else nn.Identity()
        self.output = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        if cfg.tie_output:
            self.output.weight = self.tgt_embed.weight
        if cfg.final_logits_bias:
            self.logits_bias: Tensor | None = nn.Parameter(torch.zeros(cfg.tgt_vocab_size))
        else:
            self.logits_bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "positions" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.src_embed.weight, std=self.cfg.d_model**-0.5)
        if not self.cfg.share_embeddings:
            nn.init.normal_(self.tgt_embed.weight, std=self.cfg.d_model**-0.5)
        if not self.cfg.tie_output:
            nn.init.normal_(self.output.weight, std=self.cfg.d_model**-0.5)

    # ------------------------------------------------------------------ encoder
    def encode(self, src_ids: Tensor, src_lengths: Tensor) -> EncoderOutput:
        """src_ids: (B, S) padded ids (EOS at the end of each row); src_lengths: (B,)."""
        s = src_ids.shape[1]
        if s > self.cfg.max_positions:
            raise ValueError(f"source of {s} tokens exceeds max_positions={self.cfg.max_positions}")
        positions = torch.arange(s, device=src_ids.device)
        x = self.src_embed(src_ids) * self.embed_scale + self.src_positions(positions)[None]  # (B, S, d)
        x = self.dropout(x)
        mask = padding_mask(src_lengths, s)  # (B, 1, 1, S)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return EncoderOutput(memory=self.encoder_norm(x), lengths=src_lengths, mask=mask)

    # ------------------------------------------------------------------ decoder, teacher forced
    def decode(self, tgt_in: Tensor, enc: EncoderOutput) -> Tensor:
        """Logits (B, T, V) for every prefix of ``tgt_in`` (B, T) at once (training, scoring)."""
        t = tgt_in.shape[1]
        positions = torch.arange(t, device=tgt_in.device)
        x = self.tgt_embed(tgt_in) * self.embed_scale + self.tgt_positions(positions)[None]  # (B, T, d)
        x = self.dropout(x)
        for layer in self.decoder_layers:
            x = layer(x, enc.memory, enc.mask)
        return self._logits(self.decoder_norm(x))

    def forward(self, src_ids: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        return self.decode(tgt_in, self.encode(src_ids, src_lengths))

    # ------------------------------------------------------------------ decoder, incremental
    def init_cache(self, enc: EncoderOutput, *, capacity: int = 16) -> DecoderCache:
        """Computes every layer's cross-attention K/V from encoder memory (the only time they are
        computed) and preallocates ``capacity`` self-attention positions per row."""
        cross_k, cross_v = [], []
        for layer in self._decoder():
            k, v = layer.cross_attn.project_kv(enc.memory)  # (B, Hkv, S, D) each
            cross_k.append(k)
            cross_v.append(v)
        return DecoderCache(cross_k, cross_v, enc.lengths, capacity=capacity)

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed one token per row (R,) at each row's own position; returns logits (R, V)."""
        start = cache.max_length
        if start >= self.cfg.max_positions:
            raise ValueError(f"decoding past max_positions={self.cfg.max_positions}; lower max_length")
        self_mask, cross_mask = cache.begin_step()
        x = self.tgt_embed(tokens[:, None]) * self.embed_scale  # (R, 1, d)
        x = x + self.tgt_positions(cache.lengths)[:, None, :]  # (R, 1, d)
        for i, layer in enumerate(self._decoder()):
            x = layer.step(x, cache, i, self_mask, cross_mask)
        cache.advance()
        return self._logits(self.decoder_norm(x))[:, 0]  # (R, V)

    def _decoder(self) -> list[DecoderLayer]:
        return list(self.decoder_layers)  # type: ignore[arg-type]

    def _logits(self, x: Tensor) -> Tensor:
        logits: Tensor = self.output(x)
        if self.logits_bias is not None:
            logits = logits + self.logits_bias
        return logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
