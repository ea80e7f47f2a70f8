"""Regression: a beam reorder's spare buffer must never expose uninitialised memory.

The soak test found sentences answered as a run of ``⁇`` under mixed greedy and beam traffic: the
reorder buffer was ``torch.empty_like``; rows past the reordered ones became spare rows that a later
join filled only up to its own length, and the masked positions beyond still entered attention
(0 × NaN = NaN). Here ``empty_like`` is made to return NaN, as recycled memory may.
"""

from __future__ import annotations

import pytest
import torch
from ferry.model.cache import DecoderCache


def _cache(rows: int, src_len: int, prefix: int) -> DecoderCache:
    cross = [torch.ones(rows, 1, src_len, 2) for _ in range(2)]
    c = DecoderCache(cross, [x.clone() for x in cross], torch.full((rows,), src_len), capacity=16)
    for layer in range(2):
        c.self_k[layer][:, :, :prefix] = 1.0
        c.self_v[layer][:, :, :prefix] = 1.0
    c.lengths += prefix
    c.lengths_host = [prefix] * rows
    return c


def test_reorder_then_join_leaves_no_nonfinite_values(monkeypatch: pytest.MonkeyPatch) -> None:
    real_empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: real_empty_like(t, **kw).fill_(float("nan")))
    cache = _cache(8, 4, 6)
    cache.select_rows(torch.arange(4))  # 4 rows live in an 8-row buffer
    cache.reorder(torch.tensor([3, 2, 1, 0]))  # most rows move: gathered into the spare buffer, swapped in
    cache.extend(_cache(3, 4, 1))  # joins land in the swapped-in buffer's spare rows, 1 position written
    t = cache.max_length + 1
    cache.ensure_capacity(t)
    for layer in range(cache.num_layers):
        assert torch.isfinite(cache.self_k[layer][:, :, :t]).all()
        assert torch.isfinite(cache.self_v[layer][:, :, :t]).all()
