"""DecoderCache: preallocated writes, cross K/V computed once, row edits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from ferry.model import Translator
from ferry.model.cache import DecoderCache
from ferry.model.transformer import Transformer


def test_cross_attention_kv_computed_once_per_sequence(tiny_checkpoint: Path) -> None:
    t = Translator(tiny_checkpoint, device="cpu")
    texts = ["red cat runs", "a big dog sleeps", "tree"]
    source_tokens = sum(len(ids) for ids in t.tokenize(texts))
    # The packed encoder (CPU fast path) projects the real source tokens, once per layer.
    packed = t.packed_encoder()
    assert packed is not None
    rows_seen: list[int] = []

    def recording(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def call(x: torch.Tensor) -> torch.Tensor:
            rows_seen.append(x.shape[0])
            return fn(x)

        return call

    packed.cross_kv = [recording(fn) for fn in packed.cross_kv]
    for beam in (1, 4):
        rows_seen.clear()
        t.translate_batch(texts, beam_size=beam)
        # One projection per layer over the source tokens, never per step or per beam.
        assert rows_seen == [source_tokens] * len(t.model.decoder_layers)
    # The module path: one projection per layer over the 3 padded encoder rows.
    t._packed_encoder = None
    hooks = [
        (layer.cross_attn.kv_proj or layer.cross_attn.k_proj).register_forward_hook(
            lambda m, i, o: rows_seen.append(o.shape[0])
        )
        for layer in t.model.decoder_layers
    ]
    try:
        for beam in (1, 4):
            rows_seen.clear()
            t.translate_batch(texts, beam_size=beam)
            assert rows_seen == [3] * len(t.model.decoder_layers)
    finally:
        for h in hooks:
            h.remove()


def _cache(model: Transformer, lengths: list[int]) -> torch.Tensor:
    src = torch.randint(4, model.cfg.src_vocab_size, (len(lengths), max(lengths)))
    return model.init_cache(model.encode(src, torch.tensor(lengths)), capacity=8)  # type: ignore[return-value]


def test_self_attention_buffers_are_written_in_place(tiny_checkpoint: Path) -> None:
    model = Translator(tiny_checkpoint, device="cpu").model
    with torch.no_grad():
        cache = model.init_cache(model.encode(torch.tensor([[5, 6, 3]]), torch.tensor([3])), capacity=8)
        ptr = cache.self_k[0].data_ptr()
        size = cache.size_bytes()
        for _ in range(8):
            model.decode_step(torch.tensor([2]), cache)
        assert cache.self_k[0].data_ptr() == ptr  # no reallocation while within capacity
        assert cache.size_bytes() == size
        assert cache.lengths.tolist() == [8] and cache.lengths_host == [8]
        model.decode_step(torch.tensor([2]), cache)  # past capacity: grows once (doubling)
        assert cache.capacity == 16
        cfg = model.cfg
        per_pos = 2 * cfg.decoder_layers * cfg.kv_heads * cfg.head_dim * 4  # K and V, float32
        assert cache.size_bytes() == per_pos * (16 + 3)  # self capacity + 3 source positions


def test_reorder_select_and_extend() -> None:
    from ferry.model.cache import DecoderCache

    def cache_with(values: list[float], src_len: list[int]) -> DecoderCache:
        cross = [torch.tensor(values)[:, None, None, None].expand(len(values), 1, max(src_len), 2).clone()]
        c = DecoderCache(cross, [x.clone() for x in cross], torch.tensor(src_len), capacity=4)
        for i, v in enumerate(values):
            c.self_k[0][i, :, 0] = v
        c.lengths += 1
        c.lengths_host = [1] * len(values)
        return c

    c = cache_with([1.0, 2.0, 3.0], [2, 5, 1])
    c.reorder(torch.tensor([0, 0, 2]))
    assert c.self_k[0][:, 0, 0, 0].tolist() == [1.0, 1.0, 3.0]
    assert c.cross_k[0][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]  # cross state untouched by reorder
    c.select_rows(torch.tensor([2, 0]))
    assert c.self_k[0][:, 0, 0, 0].tolist() == [3.0, 1.0]
    assert c.src_lengths.tolist() == [1, 2] and c.cross_k[0].shape[2] == 2  # source padding trimmed
    c.extend(cache_with([7.0], [6]))
    assert c.num_rows == 3 and c.src_lengths_host == [1, 2, 6]
    assert c.cross_k[0].shape[2] == 6 and c.cross_mask()[:, 0, 0].sum(-1).tolist() == [1, 2, 6]
    assert c.self_k[0][:, 0, 0, 0].tolist() == [3.0, 1.0, 7.0]


def _rows(n: int, src_len: int, prefix: int, *, layers: int = 2) -> DecoderCache:
    cross = [torch.ones(n, 1, src_len, 2) for _ in range(layers)]
    c = DecoderCache(cross, [x.clone() for x in cross], torch.full((n,), src_len), capacity=max(prefix, 1))
    c.lengths += prefix
    c.lengths_host = [prefix] * n
    return c


def test_greedy_joins_do_not_grow_row_capacity_without_bound() -> None:
    """Regression (hardening issue, item 1): every join that only widened the source or the prefix
    used to double the row capacity, so a greedy server's cache grew without bound."""
    cache = _rows(4, 3, 1)
    cache.max_rows = 16
    peak_bytes = 0
    for i in range(200):
        cache.extend(_rows(4, 3 + i % 40, 1 + i % 30))  # ever-changing widths force reallocations
        assert cache.row_capacity <= 16 or cache.row_capacity == cache.num_rows
        keep = torch.arange(max(cache.num_rows - 4, 0), cache.num_rows)  # the oldest rows finish
        cache.select_rows(keep)
        peak_bytes = max(peak_bytes, cache.size_bytes())
    # Bound: 16 rows × (T ≤ 2·30 + S ≤ 2·42) positions × 2 layers × K,V × 2 floats × 4 bytes, with slack.
    assert peak_bytes <= 16 * (64 + 84) * 2 * 2 * 2 * 4


def test_capacity_shrinks_back_when_load_drops() -> None:
    cache = _rows(64, 100, 60)
    big = cache.size_bytes()
    cache.select_rows(torch.tensor([0]))  # one short row left of 64 long ones
    assert cache.num_rows == 1
    assert cache.size_bytes() < big / 8
    assert cache.row_capacity == 2 and cache.capacity <= 2 * 61


def test_extend_grows_rows_only_when_needed() -> None:
    cache = _rows(4, 3, 1)
    cache.select_rows(torch.tensor([0, 1]))  # 2 rows live, 4 held
    cache.extend(_rows(2, 9, 5))  # wider and longer, but the rows fit: row capacity unchanged
    assert cache.row_capacity == 4 and cache.source_capacity == 9 and cache.capacity >= 6
    cache.extend(_rows(1, 2, 1))  # 5 rows: doubles
    assert cache.row_capacity == 8
