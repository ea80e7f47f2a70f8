"""The decoder's explicit inference state.

Self-attention K/V live in preallocated per-layer buffers written in place, one position per step,
with a length per row, so rows at different decoding positions share one batch. Cross-attention K/V
are computed once per sequence from encoder memory and only read afterwards. Rows can be reordered
(beam search), dropped (finished or cancelled sequences) and appended (new requests joining a running
batch: continuous batching).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _placement(history: list[list[int]], group: int) -> dict[int, int] | None:
    """Where each K/V row that new rows' histories (``history``: per new row, the K/V row of each
    position) use goes, as ``{K/V row: new row}``. Rows come in blocks of ``group`` (a sentence's
    beams). A K/V row inside a block that reads it stays where it is (sentences that did not move
    copy nothing); any other goes to a free row of a block reading it, so a sentence's history
    stays among its own rows and a later selection keeping whole sentences finds every K/V row it
    needs among the rows it keeps. ``None`` when some K/V row finds no free row."""
    n = len(history)
    readers: dict[int, list[int]] = {}
    for row, positions in enumerate(history):
        for u in dict.fromkeys(positions):
            readers.setdefault(u, []).append(row)
    place: dict[int, int] = {}
    for u, rows in readers.items():
        if u < n and any(r // group == u // group for r in rows):
            place[u] = u
    taken = set(place.values())
    for u in sorted(readers):
        if u in place:
            continue
        blocks = sorted({r // group for r in readers[u]})
        candidates = (r for b in blocks for r in range(b * group, min(b * group + group, n)))
        free = next((r for r in candidates if r not in taken), None)
        if free is None:
            return None
        place[u] = free
        taken.add(free)
    return place


class DecoderCache:
    """Per-layer K/V for ``R`` decoder rows.

    Shapes (views): ``self_k[l]``/``self_v[l]``: (R, Hkv, T_cap, D); ``cross_k[l]``/``cross_v[l]``:
    (R / group, Hkv, S, D) with S the longest source still present; ``lengths``: (R,) tokens already in
    the self-attention cache; ``src_lengths``: (R,) real source tokens (the rest of S is padding).

    Storage is one row-major buffer for the self-attention K/V of every layer, (R_cap, L, 2, Hkv,
    T_cap, D), and one for cross-attention, (N_cap, L, 2, Hkv, S_cap, D): a row edit is one copy for
    all layers. ``group`` consecutive rows (the beams of one sentence) share one cross-attention row:
    ``select_rows`` with the ``repeat_interleave`` pattern of a beam expansion sets ``group`` instead of
    copying encoder K/V per beam.

    The views are the first rows of base buffers that keep spare rows: rows that join are copied
    into the spare rows (the running rows are not copied); reorders/drops move only the rows whose
    position changes, or, when most rows move (beam search), gather into a spare buffer that is then
    swapped in. Positions a row has not written hold zeros or stale finite values, which the
    attention masks exclude. Host-side mirrors of the lengths avoid device syncs in the loop.
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
        zeroed: bool = True,
        indirect: bool = False,
        _stacked: Tensor | None = None,
    ) -> None:
        if len(cross_k) != len(cross_v):
            raise ValueError("cross_k and cross_v need one tensor per layer each")
        ref = cross_k[0]
        rows, kv_heads, src_width, head_dim = ref.shape
        layers = len(cross_k)
        if _stacked is not None:  # ``over``: cross_k/cross_v are views of it
            self._cross = _stacked
        else:
            self._cross = torch.stack([torch.stack([k, v], dim=1) for k, v in zip(cross_k, cross_v)], dim=1)
        # (N_cap, L, 2, Hkv, S_cap, D)
        self.zeroed = zeroed
        """New buffers start as zeros (masked attention multiplies unwritten positions by 0, and 0 × NaN
        is NaN). ``False`` for a decoder that reads only each row's own positions (native attention):
        buffers are then left uninitialised, which saves zeroing every growth and spare buffer."""
        self._self = self._new(ref, (rows, layers, 2, kv_heads, capacity, head_dim))  # (R_cap, L, 2, Hkv, T_cap, D)
        self._spare: Tensor | None = None  # same shape as _self, allocated on the first full reorder
        self._table: Tensor | None = None
        """``indirect``: (R_cap, T_cap) int64, the K/V row holding each row's position (see ``row_table``)."""
        if indirect:
            self._table = self._identity_table(rows, capacity, ref.device)
        self.group = 1
        """Consecutive rows sharing one cross-attention row (beams of one sentence)."""
        self.src_lengths = src_lengths
        self.src_lengths_host = list(src_lengths_host) if src_lengths_host is not None else src_lengths.tolist()
        self.lengths = torch.zeros(rows, dtype=torch.long, device=ref.device)
        self.lengths_host = [0] * rows
        self._src_width = src_width
        self._step_len = 0
        self._step_rows: Tensor | None = None  # set by begin_step()
        self._cross_bias: Tensor | None = None  # additive cross mask, rebuilt when rows change
        self.max_rows = max_rows
        """Most rows the base buffers grow to in one go (the serving batch limit); None = no bound
        beyond twice the rows in use."""
        self.max_positions = max_positions
        """Most self-attention positions the buffers grow to (the model's decoding limit)."""
        self._refresh_views()

    @classmethod
    def over(cls, cross: Tensor, src_lengths: Tensor, **options: Any) -> DecoderCache:
        """A cache whose cross-attention buffer is ``cross``, (N, L, 2, Hkv, S, D) as
        ``LeanEncoder.encode_stacked`` makes it, taken as is (no copy); ``options`` as for the
        constructor."""
        layers = range(cross.shape[1])
        cross_k = [cross[:, layer, 0] for layer in layers]  # (N, Hkv, S, D) views
        cross_v = [cross[:, layer, 1] for layer in layers]
        return cls(cross_k, cross_v, src_lengths, _stacked=cross, **options)

    @property
    def indirect(self) -> bool:
        """Beam reorders rewrite only ``row_table``, never the K/V (for the native attention, which
        reads position ``t`` of row ``r`` from K/V row ``row_table[r, t]``). Each (row, position)
        slot is written once, by the row there at that step, so a reorder only has to give row ``i``
        the table row of ``indices[i]``; moves between sequences (``select_rows``) still move K/V
        and remap the table. Without it, rows hold their own history (what masked SDPA reads)."""
        return self._table is not None

    @property
    def row_table(self) -> Tensor | None:
        """(R_cap, T_cap) int64 K/V row of each row's positions (``indirect`` caches), else ``None``.
        Only positions below a row's length are meaningful."""
        return self._table

    @property
    def buffers(self) -> tuple[Tensor, Tensor]:
        """The stacked self- and cross-attention buffers every layer's ``self_k``/``self_v`` and
        ``cross_k``/``cross_v`` are views of: (R_cap, L, 2, Hkv, T_cap, D) and (N_cap, L, 2, Hkv,
        S_cap, D) (for a native step that runs all layers in one call). They move when the cache grows."""
        return self._self, self._cross

    @staticmethod
    def _identity_table(rows: int, capacity: int, device: torch.device) -> Tensor:
        """(rows, capacity) table where every row reads its own K/V row."""
        return torch.arange(rows, device=device)[:, None].repeat(1, capacity)  # (R_cap, T_cap)

    def self_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        """Each row's own K and V history for ``layer`` in row order, (R, Hkv, T, D) copies with T the
        longest row (what an indirect cache's table points at; for inspection and tests)."""
        t = self.max_length
        k, v = self.self_k[layer][:, :, :t], self.self_v[layer][:, :, :t]
        if self._table is None:
            return k.clone(), v.clone()
        base_k, base_v = self._self[:, layer, 0], self._self[:, layer, 1]  # (R_cap, Hkv, T_cap, D)
        rows = self._table[: self.num_rows, :t]  # (R, T)
        positions = torch.arange(t, device=rows.device)[None, :].expand_as(rows)  # (R, T)
        gathered_k = base_k[rows, :, positions]  # (R, T, Hkv, D)
        gathered_v = base_v[rows, :, positions]
        return gathered_k.transpose(1, 2).contiguous(), gathered_v.transpose(1, 2).contiguous()

    def _new(self, like: Tensor, shape: Sequence[int]) -> Tensor:
        """A buffer of ``like``'s dtype and device: zeros, or uninitialised unless ``zeroed``."""
        return like.new_zeros(shape) if self.zeroed else like.new_empty(shape)

    def _refresh_views(self) -> None:
        s, n = self._src_width, self.num_sources
        self._refresh_self_views()
        self.cross_k = [self._cross[:n, layer, 0, :, :s] for layer in range(self.num_layers)]  # (N, Hkv, S, D)
        self.cross_v = [self._cross[:n, layer, 1, :, :s] for layer in range(self.num_layers)]
        self._cross_bias = None

    def _refresh_self_views(self) -> None:
        r = self.num_rows
        self.self_k = [self._self[:r, layer, 0] for layer in range(self.num_layers)]  # (R, Hkv, T_cap, D)
        self.self_v = [self._self[:r, layer, 1] for layer in range(self.num_layers)]

    # ------------------------------------------------------------------ sizes
    @property
    def num_rows(self) -> int:
        return len(self.lengths_host)

    @property
    def num_sources(self) -> int:
        """Cross-attention rows in use: ``num_rows / group``."""
        return self.num_rows // self.group

    @property
    def num_layers(self) -> int:
        return int(self._cross.shape[1])

    @property
    def capacity(self) -> int:
        """Self-attention positions per row before the buffers grow."""
        return int(self._self.shape[4])

    @property
    def row_capacity(self) -> int:
        """Rows the base buffers hold before a join must reallocate."""
        return min(int(self._self.shape[0]), int(self._cross.shape[0]) * self.group)

    @property
    def max_length(self) -> int:
        return max(self.lengths_host, default=0)

    def size_bytes(self) -> int:
        """Bytes held by all K/V buffers (allocated capacity, spare rows and reorder buffer included)."""
        tensors = [t for t in (self._self, self._cross, self._spare, self._table) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ------------------------------------------------------------------ step
    @property
    def source_capacity(self) -> int:
        """Source positions the cross-attention buffers hold before a join must reallocate."""
        return int(self._cross.shape[4])

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
        r, t, s, n = self.num_rows, self.max_length, self._src_width, self.num_sources
        old = self._self
        shape = list(old.shape)
        shape[0], shape[4] = rows, t_cap
        new = self._new(old, shape)  # (R_cap, L, 2, Hkv, T_cap, D)
        new[:r, :, :, :, :t] = old[:r, :, :, :, :t]
        self._self = new
        self._spare = None
        old = self._cross
        shape = list(old.shape)
        shape[0], shape[4] = max(-(-rows // self.group), n), s_cap
        new = self._new(old, shape)  # (N_cap, L, 2, Hkv, S_cap, D)
        new[:n, :, :, :, :s] = old[:n, :, :, :, :s]
        self._cross = new
        if self._table is not None:
            table = self._identity_table(rows, t_cap, self._table.device)  # (R_cap, T_cap)
            table[:r, :t] = self._table[:r, :t]
            self._table = table
        self._refresh_views()

    def reserve_step(self) -> int:
        """Make room for one more position in every row; returns the step's width ``T`` (the longest
        row after this step). ``begin_step`` calls it; a decoder that stores and attends by
        ``lengths`` itself (``model/native.py``) needs nothing else: no masks, no ``write``."""
        t = self.max_length + 1
        self.ensure_capacity(t)
        self._step_len = t
        return t

    def begin_step(self) -> tuple[Tensor | None, Tensor]:
        """Once per decode step, before the layers write: makes room for one more position and
        returns the additive float masks (0 where a query may look, -inf elsewhere) of
        self-attention ((R, 1, 1, T), or ``None`` when every row is at the same position, so nothing
        needs masking) and cross-attention ((R / group, 1, 1, S), built once until rows change)."""
        if self._table is not None or not self.zeroed:
            raise ValueError(
                "this decoder cache is laid out for the native attention (row table, memory not zeroed): "
                "masked attention would read it wrongly; decode it with the stepper that made it "
                "(Translator.decode_step)"
            )
        t = self.reserve_step()
        if self.uniform:  # offline decoding: every row writes position t - 1, a plain slice store
            self._step_rows = None
            mask: Tensor | None = None
        else:
            self._step_rows = torch.arange(self.num_rows, device=self.lengths.device)
            positions = torch.arange(t, device=self.lengths.device)
            blocked = (positions[None, :] > self.lengths[:, None])[:, None, None, :]  # (R, 1, 1, T)
            mask = self._self.new_zeros(blocked.shape).masked_fill_(blocked, float("-inf"))
        if self._cross_bias is None:
            blocked = ~self.cross_mask()[:: self.group]  # (N, 1, 1, S)
            self._cross_bias = self._cross.new_zeros(blocked.shape).masked_fill_(blocked, float("-inf"))
        return mask, self._cross_bias

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
        if self._table is not None:  # the K/V stay where they are: only the table follows
            w = self.max_length
            if w:
                self._table[: len(idx), :w] = self._table[:, :w].index_select(0, indices)
        else:
            self._take_self(idx, indices)
        self.lengths = self.lengths.index_select(0, indices)
        self.lengths_host = [self.lengths_host[i] for i in idx]

    def select_rows(self, indices: Tensor) -> None:
        """Keep rows ``indices`` in that order (drops finished/cancelled rows, duplicates rows)."""
        idx = indices.tolist()
        r, g = self.num_rows, self.group
        if g == 1 and r and len(idx) > r and len(idx) % r == 0 and idx == [i * r // len(idx) for i in range(len(idx))]:
            cross_idx: list[int] | None = None  # beam expansion: each source row now serves len/r rows
            new_group = len(idx) // r
        else:
            cross_idx = self._grouped_sources(idx)
            if cross_idx is None:  # the rows no longer come in whole groups: one cross row per row
                self._ungroup()
                cross_idx = idx
            new_group = self.group
        if self._table is not None:
            self._select_indirect(idx, indices, new_group)
        else:
            self._take_self(idx, indices)
        if cross_idx is not None:
            self._cross = self._take_rows(self._cross, cross_idx, self._src_width, spare=False)
        self.group = new_group
        self.lengths = self.lengths.index_select(0, indices)
        self.lengths_host = [self.lengths_host[i] for i in idx]
        self.src_lengths = self.src_lengths.index_select(0, indices)
        self.src_lengths_host = [self.src_lengths_host[i] for i in idx]
        self._src_width = max(self.src_lengths_host, default=0)  # no row needs the padding past it
        self._refresh_views()
        self._shrink_if_oversized()

    def _grouped_sources(self, idx: list[int]) -> list[int] | None:
        """The cross rows for new rows ``idx`` when they keep whole groups (each block of ``group``
        new rows comes from one old group), else ``None``."""
        g = self.group
        if g == 1:
            return idx
        if len(idx) % g:
            return None
        sources = []
        for start in range(0, len(idx), g):
            src = idx[start] // g
            if any(i // g != src for i in idx[start : start + g]):
                return None
            sources.append(src)
        return sources

    def _ungroup(self) -> None:
        """Give every row its own cross-attention row (copies the shared encoder K/V)."""
        if self.group == 1:
            return
        n, r = self.num_sources, self.num_rows
        rows = torch.arange(r, device=self._cross.device) // self.group
        cap = max(int(self._cross.shape[0]) * self.group, r)
        shape = list(self._cross.shape)
        shape[0] = cap
        new = self._new(self._cross, shape)  # (R_cap, L, 2, Hkv, S_cap, D)
        new[:r] = self._cross[:n].index_select(0, rows)
        self._cross = new
        self.group = 1
        self._refresh_views()

    def _take_self(self, idx: list[int], indices: Tensor) -> None:
        base = self._self
        self._self = self._take_rows(base, idx, self.max_length, spare=True)
        if self._self is not base:
            self._refresh_self_views()

    def _select_indirect(self, idx: list[int], indices: Tensor, group: int) -> None:
        """``select_rows`` for an indirect cache. New row ``i`` reads the history of old row
        ``indices[i]``, which may lie in K/V rows no new row continues (a beam dropped this step).
        Each K/V row those histories use stays or moves into the block of ``group`` new rows (one
        sentence's beams) reading it (``_placement``), and the table is renamed to match. A row
        writes its next positions into its own K/V row, past every position its sentence's table
        names there (a sentence's beams are all at one position), so a K/V row may hold one beam's
        history and another beam's future. Histories spread over more K/V rows than their sentence
        keeps get each history copied into its own row instead (``_materialize``)."""
        table = self._table
        assert table is not None
        n, w = indices.numel(), self.max_length
        if w:
            history = table[:, :w].index_select(0, indices)  # (R', w) K/V row of each position
            written = [row[: self.lengths_host[i]] for row, i in zip(history.tolist(), idx)]  # past it: stale
            place = _placement(written, group)
            if place is None:
                self._materialize(history)
                return
            old_rows = int(self._self.shape[0])
            take = [i if i < old_rows else 0 for i in range(n)]  # rows no history moves into: as they are
            for u, i in place.items():
                take[i] = u
            self._self = self._take_rows(self._self, take, w, spare=True)  # K/V row place[u] <- row u
            renamed = torch.zeros(table.shape[0], dtype=torch.long, device=table.device)
            used = torch.tensor(list(place), dtype=torch.long, device=table.device)
            renamed[used] = torch.tensor(list(place.values()), dtype=torch.long, device=table.device)
            history = renamed[history]
        if self._self.shape[0] < n:  # more rows than the buffers hold (a beam expansion at w = 0)
            old = self._self
            shape = list(old.shape)
            shape[0] = n
            grown = self._new(old, shape)  # (R', L, 2, Hkv, T_cap, D)
            grown[: old.shape[0], :, :, :, :w] = old[:, :, :, :, :w]
            self._self, self._spare = grown, None
        if table.shape[0] < self._self.shape[0]:
            table = self._table = self._identity_table(int(self._self.shape[0]), int(table.shape[1]), table.device)
        if w:
            table[:n, :w] = history

    def _materialize(self, history: Tensor) -> None:
        """Copy each new row's history (``history``: (R', w) K/V rows) into its own K/V row and reset
        the table to identity (the indirect cache's fallback when histories use more rows than remain)."""
        n, w = history.shape
        positions = torch.arange(w, device=history.device)[None, :].expand(n, w)  # (R', w)
        gathered = self._self[history, :, :, :, positions]  # (R', w, L, 2, Hkv, D)
        shape = list(self._self.shape)
        shape[0] = max(n, shape[0])
        new = self._new(self._self, shape)  # (R_cap, L, 2, Hkv, T_cap, D)
        new[:n, :, :, :, :w] = gathered.permute(0, 2, 3, 4, 1, 5)  # (R', L, 2, Hkv, w, D)
        self._self, self._spare = new, None
        self._table = self._identity_table(shape[0], int(shape[4]), history.device)

    def _take_rows(self, base: Tensor, idx: list[int], width: int, *, spare: bool) -> Tensor:
        """``base`` with row ``i`` holding old row ``idx[i]`` (in place when the rows fit). Few
        moved rows: copy only those; most rows moved (beam reorders) and ``spare``: gather all into
        the spare buffer and swap it in (the old base becomes the next spare)."""
        if len(idx) > base.shape[0]:  # more rows than the base holds (beam expansion): gather anew
            if spare:
                self._spare = None
            return base.index_select(0, torch.tensor(idx, device=base.device))  # (R', ...)
        moved = [i for i, j in enumerate(idx) if i != j]
        if not moved:
            return base
        if spare and 2 * len(moved) > len(idx) and width > 0:
            if self._spare is None or self._spare.shape != base.shape:
                # Zeros unless the decoder reads only each row's own positions (``zeroed``): rows past
                # len(idx) become spare rows that later joins fill only up to their own length, and
                # masked attention reads every position up to the longest row (0 × NaN is NaN):
                # uninitialised memory there turned outputs into ⁇.
                self._spare = self._new(base, base.shape)
            out = self._spare
            # Only the ``width`` positions rows hold: the rest of each row is never read before the
            # row writes it (stale but finite values there are masked).
            rows = torch.tensor(idx, device=base.device)
            torch.index_select(base.narrow(4, 0, width), 0, rows, out=out[: len(idx)].narrow(4, 0, width))
            self._spare = base
            return out
        dst = torch.tensor(moved, device=base.device)
        src = torch.tensor([idx[i] for i in moved], device=base.device)
        base[dst, :, :, :, :width] = base[src, :, :, :, :width]  # the right side is a copy: overlaps are safe
        return base

    def extend(self, other: DecoderCache) -> None:
        """Append ``other``'s rows after this cache's rows (new requests join a running batch).
        The running rows stay where they are; only ``other``'s rows are copied (into spare rows).
        Capacity follows need: rows grow (doubling, bounded by ``max_rows``) only when the rows do not
        fit; a wider source or a longer prefix reallocates at the current row capacity."""
        if other.num_layers != self.num_layers:
            raise ValueError(f"cannot join caches with {other.num_layers} and {self.num_layers} layers")
        if self.num_rows == 0:
            self.group = other.group
        if other.group != self.group:
            self._ungroup()
            other._ungroup()
        r, extra = self.num_rows, other.num_rows
        n, n_extra = self.num_sources, other.num_sources
        width = max(self._src_width, other._src_width)
        t_cap = max(self.capacity, other.max_length + 1)
        rows = self._grown_rows(r + extra)
        if rows > self.row_capacity or width > self.source_capacity or t_cap > self.capacity:
            self._reallocate(rows, t_cap, max(width, self.source_capacity))
        t_other, s_other = other.max_length, other._src_width
        self._self[r : r + extra, :, :, :, :t_other] = other._self[:extra, :, :, :, :t_other]
        if self._table is not None:  # the joined rows' entries, shifted past the running rows
            if other._table is not None:
                self._table[r : r + extra, :t_other] = other._table[:extra, :t_other] + r
            else:
                self._table[r : r + extra, :t_other] = torch.arange(r, r + extra, device=self._table.device)[:, None]
        self._cross[n : n + n_extra, :, :, :, :s_other] = other._cross[:n_extra, :, :, :, :s_other]
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.lengths_host = self.lengths_host + other.lengths_host
        self.src_lengths = torch.cat([self.src_lengths, other.src_lengths])
        self.src_lengths_host = self.src_lengths_host + other.src_lengths_host
        self._src_width = width
        self._refresh_views()
