"""Position encodings: Marian-layout sinusoids or a learned table."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import TransformerConfig


def sinusoidal_table(n_positions: int, dim: int) -> Tensor:
    """(n_positions, dim) table: first half ``sin(p / 10000^(2i/dim))``, second half ``cos(...)``,
    positions starting at 0 (the layout of Marian and tensor2tensor)."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float64) * 2 / dim
    inv_freq = torch.exp(-math.log(10000.0) * exponent)  # (half,)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (P, half)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, :half] = torch.sin(angles)
    table[:, half : 2 * half] = torch.cos(angles)
    return table.float()


class PositionEncoding(nn.Module):
    """Maps integer positions to vectors of width ``d_model``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.kind = cfg.positions
        self.max_positions = cfg.max_positions
        if cfg.positions == "learned":
            self.table = nn.Parameter(torch.randn(cfg.max_positions, cfg.d_model) * cfg.d_model**-0.5)
        else:
            # Not a parameter, not saved: recomputed from the config on load.
            self.register_buffer("table", sinusoidal_table(cfg.max_positions, cfg.d_model), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        """positions: any integer shape -> that shape + (d_model,). Callers check the range on
        the host (the encoder by input shape, the cache by its length mirror): no device sync here."""
        table: Tensor = self.table
        return table[positions]
