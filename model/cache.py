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

    Shapes (views): ``self_k[l]``/``self_v[l]``: (R, Hkv, T_cap, D); ``cross_k[l]``/``cross_v[l]``:
    (R, Hkv, S, D) with S the longest source still present; ``lengths``: (R,) tokens already in the
    self-attention cache; ``src_lengths``: (R,) real source tokens (the rest of S is padding).

    The views are the first R rows of base buffers that keep spare rows: rows that join are copied
    into the spare rows (the running rows are not copied), and reorders/drops move only the rows
    whose position changes. Positions a row has not written hold zeros or stale finite values, which
    the attention masks exclude. Host-side mirrors of the lengths avoid device syncs in the loop.
    """

    def __init__(
        self,
        cross_k: list[Tensor],
        cross_v: list[Tensor],
        src_lengths: Tensor,
        *,
        capacity: int,
        src_lengths_host: list[int] | None = None,
        max_rows: int | None = None,
        max_positions: int | None = None,
    ) -> None:
        if len(cross_k) != len(cross_v):
            raise ValueError("cross_k and cross_v need one tensor per layer each")
        ref = cross_k[0]
        rows, kv_heads, src_width, head_dim = ref.shape
        self._cross_k = list(cross_k)  # bases: (R_cap, Hkv, S_cap, D)
        self._cross_v = list(cross_v)
        self._self_k = [ref.new_zeros(rows, kv_heads, capacity, head_dim) for _ in cross_k]  # (R_cap, Hkv, T_cap, D)
        self._self_v = [ref.new_zeros(rows, kv_heads, capacity, head_dim) for _ in cross_k]
        self.src_lengths = src_lengths
        self.src_lengths_host = list(src_lengths_host) if src_lengths_host is not None else src_lengths.tolist()
        self.lengths = torch.zeros(rows, dtype=torch.long, device=ref.device)
        self.lengths_host = [0] * rows
        self._src_width = src_width
        self._step_len = 0
        self._step_rows: Tensor | None = None  # set by begin_step()
        self.max_rows = max_rows
        """Most rows the base buffers grow to in one go (the serving batch limit); None = no bound
        beyond twice the rows in use."""
        self.max_positions = max_positions
        """Most self-attention positions the buffers grow to (the model's decoding limit)."""
        self._refresh_views()

    def _refresh_views(self) -> None:
        r, s = self.num_rows, self._src_width
        self.self_k = [b[:r] for b in self._self_k]
        self.self_v = [b[:r] for b in self._self_v]
        self.cross_k = [b[:r, :, :s] for b in self._cross_k]
        self.cross_v = [b[:r, :, :s] for b in self._cross_v]

    # ------------------------------------------------------------------ sizes
    @property
    def num_rows(self) -> int:
        return len(self.lengths_host)

    @property
    def num_layers(self) -> int:
        return len(self._cross_k)

    @property
    def capacity(self) -> int:
        """Self-attention positions per row before the buffers grow."""
        return self._self_k[0].shape[2] if self._self_k else 0

    @property
    def row_capacity(self) -> int:
        """Rows the base buffers hold before a join must reallocate."""
        return min(self._self_k[0].shape[0], self._cross_k[0].shape[0])

    @property
    def max_length(self) -> int:
        return max(self.lengths_host, default=0)

    def size_bytes(self) -> int:
        """Bytes held by all K/V buffers (allocated capacity, spare rows included)."""
        tensors = [*self._self_k, *self._self_v, *self._cross_k, *self._cross_v]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------ step
    @property
    def source_capacity(self) -> int:
        """Source positions the cross-attention buffers hold before a join must reallocate."""
        return self._cross_k[0].shape[2] if self._cross_k else 0

    def ensure_capacity(self, needed: int) -> None:
        """Grow the self-attention buffers (doubling, up to ``max_positions``) so that ``needed`` fit."""
        cap = self.capacity
        if needed <= cap:
            return
        grown = max(needed, 2 * cap, 8)
        if self.max_positions is not None:
            grown = max(needed, min(grown, self.max_positions))
        self._reallocate(self.row_capacity, grown, self.source_capacity)

    def _grown_rows(self, needed: int) -> int:
        """Row capacity for ``needed`` rows: the current one if it fits, else doubled (amortised
        joins) but never past ``max_rows`` unless ``needed`` itself is larger."""
        cap = self.row_capacity
        if needed <= cap:
            return cap
        grown = max(needed, 2 * cap)
        return max(needed, min(grown, self.max_rows)) if self.max_rows is not None else grown

    def _shrink_if_oversized(self) -> None:
        """Give memory back once load drops: when the buffers hold more than 8× what the live rows
        need, reallocate them to 2× that need (the hysteresis keeps joins from thrashing)."""
        need_r = max(self.num_rows, 1)
        need_t = max(self.max_length + 1, 8)
        need_s = max(self._src_width, 1)
        cap_r, cap_t, cap_s = self.row_capacity, self.capacity, self.source_capacity
        if cap_r * (cap_t + cap_s) <= 8 * need_r * (need_t + need_s):
            return
        self._reallocate(min(cap_r, 2 * need_r), min(cap_t, 2 * need_t), min(cap_s, 2 * need_s))

    def _reallocate(self, rows: int, t_cap: int, s_cap: int) -> None:
        """New base buffers of the given sizes holding the current rows' contents."""
        r, t, s = self.num_rows, self.max_length, self._src_width
        for bases, width, keep in (
            (self._self_k, t_cap, t),
            (self._self_v, t_cap, t),
            (self._cross_k, s_cap, s),
            (self._cross_v, s_cap, s),
        ):
            for layer, old in enumerate(bases):
                new = old.new_zeros(rows, old.shape[1], width, old.shape[3])  # (R_cap, Hkv, width, D)
                new[:r, :, :keep] = old[:r, :, :keep]
                bases[layer] = new
        self._refresh_views()

    def begin_step(self) -> tuple[Tensor | None, Tensor]:
        """Once per decode step, before the layers write: makes room for one more position and
        returns the self-attention key mask ((R, 1, 1, T) bool, or ``None`` when every row is at the
        same position, so nothing needs masking) and the cross-attention mask ((R, 1, 1, S))."""
        t = self.max_length + 1
        self.ensure_capacity(t)
        self._step_len = t
        if self.uniform:  # offline decoding: every row writes position t - 1, a plain slice store
            self._step_rows = None
            mask: Tensor | None = None
        else:
            self._step_rows = torch.arange(self.num_rows, device=self.lengths.device)
            positions = torch.arange(t, device=self.lengths.device)
            mask = (positions[None, :] <= self.lengths[:, None])[:, None, None, :]  # (R, 1, 1, T)
        return mask, self.cross_mask()

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one step's K/V (R, Hkv, 1, D) at each row's position (after ``begin_step``) and
        return the filled prefix of this layer's buffers: (R, Hkv, T, D) ×2."""
        t = self._step_len
        if self._step_rows is None:
            self.self_k[layer][:, :, t - 1] = k[:, :, 0]
            self.self_v[layer][:, :, t - 1] = v[:, :, 0]
        else:
            self.self_k[layer][self._step_rows, :, self.lengths] = k[:, :, 0]
            self.self_v[layer][self._step_rows, :, self.lengths] = v[:, :, 0]
        return self.self_k[layer][:, :, :t], self.self_v[layer][:, :, :t]

    @property
    def uniform(self) -> bool:
        """All rows hold the same number of positions (host-side check, no device sync)."""
        lengths = self.lengths_host
        return not lengths or lengths.count(lengths[0]) == len(lengths)

    def cross_mask(self) -> Tensor:
        """(R, 1, 1, S) bool, True on real source tokens."""
        positions = torch.arange(self._src_width, device=self.src_lengths.device)
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
        idx = indices.tolist()
        self._take(idx, indices, cross=False)
        self.lengths = self.lengths.index_select(0, indices)
        self.lengths_host = [self.lengths_host[i] for i in idx]

    def select_rows(self, indices: Tensor) -> None:
        """Keep rows ``indices`` in that order (drops finished/cancelled rows, duplicates rows)."""
        idx = indices.tolist()
        self._take(idx, indices, cross=True)
        self.lengths = self.lengths.index_select(0, indices)
        self.lengths_host = [self.lengths_host[i] for i in idx]
        self.src_lengths = self.src_lengths.index_select(0, indices)
        self.src_lengths_host = [self.src_lengths_host[i] for i in idx]
        self._src_width = max(self.src_lengths_host, default=0)  # no row needs the padding past it
        self._refresh_views()
        self._shrink_if_oversized()

    def _take(self, idx: list[int], indices: Tensor, *, cross: bool) -> None:
        """Row ``i`` of the bases becomes old row ``idx[i]``, copying only the rows that move."""
        groups = [(self._self_k, self.max_length), (self._self_v, self.max_length)]
        if cross:
            groups += [(self._cross_k, self._src_width), (self._cross_v, self._src_width)]
        if len(idx) > self.row_capacity:  # more rows than the bases hold (beam expansion): gather anew
            for bases, _ in groups:
                for layer, b in enumerate(bases):
                    bases[layer] = b.index_select(0, indices)  # (R', Hkv, width, D)
            self._refresh_views()
            return
        moved = [i for i, j in enumerate(idx) if i != j]
        if moved:
            dst = torch.tensor(moved, device=indices.device)
            src = indices.index_select(0, dst)
            for bases, width in groups:
                for b in bases:
                    b[dst, :, :width] = b[src, :, :width]  # the right side is a copy: overlaps are safe

    def extend(self, other: DecoderCache) -> None:
        """Append ``other``'s rows after this cache's rows (new requests join a running batch).
        The running rows stay where they are; only ``other``'s rows are copied (into spare rows).
        Capacity follows need: rows grow (doubling, bounded by ``max_rows``) only when the rows do not
        fit; a wider source or a longer prefix reallocates at the current row capacity."""
        if other.num_layers != self.num_layers:
            raise ValueError(f"cannot join caches with {other.num_layers} and {self.num_layers} layers")
        r, extra = self.num_rows, other.num_rows
        width = max(self._src_width, other._src_width)
        t_cap = max(self.capacity, other.max_length + 1)
        rows = self._grown_rows(r + extra)
        if rows > self.row_capacity or width > self.source_capacity or t_cap > self.capacity:
            self._reallocate(rows, t_cap, max(width, self.source_capacity))
        t_other, s_other = other.max_length, other._src_width
        for mine, theirs, keep in (
            (self._self_k, other.self_k, t_other),
            (self._self_v, other.self_v, t_other),
            (self._cross_k, other.cross_k, s_other),
            (self._cross_v, other.cross_v, s_other),
        ):
            for layer in range(self.num_layers):
                mine[layer][r : r + extra, :, :keep] = theirs[layer][:, :, :keep]  # (R', Hkv, keep, D)
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.lengths_host = self.lengths_host + other.lengths_host
        self.src_lengths = torch.cat([self.src_lengths, other.src_lengths])
        self.src_lengths_host = self.src_lengths_host + other.src_lengths_host
        self._src_width = width
        self._refresh_views()
