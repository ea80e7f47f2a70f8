"""The decoder's explicit inference state.

Self-attention K/V live in preallocated per-layer buffers written in place, one position per step,
with a length per row, so rows at different decoding positions share one batch. Cross-attention K/V
are computed once per sequence from encoder memory and only read afterwards. Rows can be reordered
(beam search), dropped (finished or cancelled sequences) and appended (new requests joining a running
batch: continuous batching).
"""

from __future__ import annotations

import torch
from torch import Tensor


class DecoderCache:
    """Per-layer K/V for ``R`` decoder rows.

    Shapes: ``self_k[l]``/``self_v[l]``: (R, Hkv, T_cap, D); ``cross_k[l]``/``cross_v[l]``:
    (R, Hkv, S_max, D); ``lengths``: (R,) tokens already in the self-attention cache;
    ``src_lengths``: (R,) real source tokens (the rest of S_max is padding).
    Host-side mirrors of the lengths avoid device syncs in the decode loop.
    """

    def __init__(
        self,
        cross_k: list[Tensor],
        cross_v: list[Tensor],
        src_lengths: Tensor,
        *,
        capacity: int,
        src_lengths_host: list[int] | None = None,
    ) -> None:
        if len(cross_k) != len(cross_v):
            raise ValueError("cross_k and cross_v need one tensor per layer each")
        ref = cross_k[0]
        rows, kv_heads, _, head_dim = ref.shape
        self.cross_k = cross_k
        self.cross_v = cross_v
        self.src_lengths = src_lengths
        self.self_k = [ref.new_zeros(rows, kv_heads, capacity, head_dim) for _ in cross_k]
        self.self_v = [ref.new_zeros(rows, kv_heads, capacity, head_dim) for _ in cross_k]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=ref.device)
        self.lengths_host = [0] * rows
        self.src_lengths_host = list(src_lengths_host) if src_lengths_host is not None else src_lengths.tolist()

    # ------------------------------------------------------------------ sizes
    @property
    def num_rows(self) -> int:
        return len(self.lengths_host)

    @property
    def num_layers(self) -> int:
        return len(self.cross_k)

    @property
    def capacity(self) -> int:
        return self.self_k[0].shape[2] if self.self_k else 0

    @property
    def max_length(self) -> int:
        return max(self.lengths_host, default=0)

    def size_bytes(self) -> int:
        """Bytes held by all K/V buffers (allocated capacity, not only the filled part)."""
        tensors = [*self.self_k, *self.self_v, *self.cross_k, *self.cross_v]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------ step
    def ensure_capacity(self, needed: int) -> None:
        """Grow the self-attention buffers (doubling) so that ``needed`` positions fit."""
        cap = self.capacity
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap, 8)
        for layer in range(self.num_layers):
            for bufs in (self.self_k, self.self_v):
                old = bufs[layer]
                r, h, _, d = old.shape
                new = old.new_zeros(r, h, new_cap, d)  # (R, Hkv, T_cap, D)
                new[:, :, :cap] = old
                bufs[layer] = new

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store one step's K/V (R, Hkv, 1, D) at each row's position and return the filled
        prefix of this layer's buffers plus the key mask: (R, Hkv, T, D) ×2, (R, 1, 1, T), or
        ``None`` when every row is at the same position (nothing to mask)."""
        t = self.max_length + 1
        if self.uniform:  # every row at the same position (offline decoding): a slice, no mask needed
            self.self_k[layer][:, :, t - 1] = k[:, :, 0]
            self.self_v[layer][:, :, t - 1] = v[:, :, 0]
            mask: Tensor | None = None
        else:
            rows = torch.arange(self.num_rows, device=k.device)
            self.self_k[layer][rows, :, self.lengths] = k[:, :, 0]
            self.self_v[layer][rows, :, self.lengths] = v[:, :, 0]
            positions = torch.arange(t, device=k.device)
            mask = (positions[None, :] <= self.lengths[:, None])[:, None, None, :]  # (R, 1, 1, T)
        return self.self_k[layer][:, :, :t], self.self_v[layer][:, :, :t], mask

    @property
    def uniform(self) -> bool:
        """All rows hold the same number of positions (host-side check, no device sync)."""
        lengths = self.lengths_host
        return not lengths or lengths.count(lengths[0]) == len(lengths)

    def cross_mask(self) -> Tensor:
        """(R, 1, 1, S_max) bool, True on real source tokens."""
        s = self.cross_k[0].shape[2]
        positions = torch.arange(s, device=self.src_lengths.device)
        return (positions[None, :] < self.src_lengths[:, None])[:, None, None, :]

    def advance(self) -> None:
        """Every row received one token."""
        self.lengths += 1
        self.lengths_host = [n + 1 for n in self.lengths_host]

    # ------------------------------------------------------------------ row edits
    def reorder(self, indices: Tensor) -> None:
        """Beam reorder: row ``i`` takes the self-attention state of row ``indices[i]``.

        Every ``indices[i]`` must belong to the same sequence as row ``i`` (beams of one sentence
        share encoder memory), so cross-attention state stays as it is. Use ``select_rows`` to
        move rows between sequences or to drop rows.
        """
        if indices.numel() != self.num_rows:
            raise ValueError(f"reorder needs {self.num_rows} indices, got {indices.numel()}; use select_rows")
        self._gather_self(indices)

    def select_rows(self, indices: Tensor) -> None:
        """Keep rows ``indices`` in that order (drops finished/cancelled rows, duplicates rows)."""
        self._gather_self(indices)
        self.src_lengths = self.src_lengths.index_select(0, indices)
        idx = indices.tolist()
        self.src_lengths_host = [self.src_lengths_host[i] for i in idx]
        s = max(self.src_lengths_host, default=0)  # trim source padding no row needs any more
        for bufs in (self.cross_k, self.cross_v):
            for layer, t in enumerate(bufs):
                bufs[layer] = t.index_select(0, indices)[:, :, :s]  # (R', Hkv, S', D)

    def _gather_self(self, indices: Tensor) -> None:
        idx = indices.tolist()
        self.lengths = self.lengths.index_select(0, indices)
        self.lengths_host = [self.lengths_host[i] for i in idx]
        for bufs in (self.self_k, self.self_v):
            for layer, buf in enumerate(bufs):
                bufs[layer] = buf.index_select(0, indices)  # (R', Hkv, T_cap, D), one copy

    def extend(self, other: DecoderCache) -> None:
        """Append ``other``'s rows after this cache's rows (new requests join a running batch)."""
        if other.num_layers != self.num_layers:
            raise ValueError(f"cannot join caches with {other.num_layers} and {self.num_layers} layers")
        cap = max(self.capacity, other.capacity)
        self.ensure_capacity(cap)
        other.ensure_capacity(cap)
        s = max(self.cross_k[0].shape[2], other.cross_k[0].shape[2])
        for bufs, extra, length in (
            (self.self_k, other.self_k, cap),
            (self.self_v, other.self_v, cap),
            (self.cross_k, other.cross_k, s),
            (self.cross_v, other.cross_v, s),
        ):
            for layer in range(self.num_layers):
                both = [_pad_time(bufs[layer], length), _pad_time(extra[layer], length)]
                bufs[layer] = torch.cat(both, dim=0)  # (R + R', Hkv, length, D)
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.lengths_host = self.lengths_host + other.lengths_host
        self.src_lengths = torch.cat([self.src_lengths, other.src_lengths])
        self.src_lengths_host = self.src_lengths_host + other.src_lengths_host


def _pad_time(t: Tensor, length: int) -> Tensor:
    """Zero-pad dim 2 of a (R, Hkv, S, D) tensor to ``length``."""
    if t.shape[2] >= length:
        return t
    pad = t.new_zeros(t.shape[0], t.shape[1], length - t.shape[2], t.shape[3])
    return torch.cat([t, pad], dim=2)
