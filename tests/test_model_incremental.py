"""Incremental decoding through the cache equals the teacher-forced forward pass."""

from __future__ import annotations

import pytest
import torch
from ferry.model import Transformer, TransformerConfig

VOCAB = 40


def make_model(**overrides: object) -> Transformer:
    base: dict[str, object] = dict(
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
        d_model=32,
        n_heads=4,
        encoder_layers=2,
        decoder_layers=2,
        ffn_dim=48,
        dropout=0.0,
        max_positions=64,
    )
    base.update(overrides)
    torch.manual_seed(0)
    return Transformer(TransformerConfig(**base)).eval()  # type: ignore[arg-type]


VARIANTS = [
    pytest.param({}, id="mha-post"),
    pytest.param({"n_kv_heads": 2}, id="gqa-post"),
    pytest.param({"norm_position": "pre"}, id="mha-pre"),
    pytest.param({"n_kv_heads": 1, "norm_position": "pre"}, id="mqa-pre"),
    pytest.param(
        {
            "positions": "learned",
            "activation": "gelu",
            "share_embeddings": False,
            "tie_output": False,
            "final_logits_bias": True,
        },
        id="learned-gelu-untied",
    ),
    pytest.param({"activation": "swish", "scale_embedding": False, "attention_bias": False}, id="swish-nobias"),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_step_by_step_equals_full_forward(overrides: dict[str, object]) -> None:
    model = make_model(**overrides)
    torch.manual_seed(1)
    src = torch.randint(4, VOCAB, (3, 9))
    src_len = torch.tensor([9, 5, 1])  # mixed lengths: padded rows must not leak
    tgt = torch.randint(4, VOCAB, (3, 7))
    with torch.no_grad():
        full = model(src, src_len, tgt)  # (B, T, V)
        cache = model.init_cache(model.encode(src, src_len), capacity=2)  # forces growth
        steps = torch.stack([model.decode_step(tgt[:, t], cache) for t in range(tgt.shape[1])], dim=1)
    diff = (full - steps).abs().max().item()
    assert diff < 1e-5, diff


def test_rows_at_different_positions_share_a_batch() -> None:
    """A row joining a running batch (continuous batching) gets exactly what it gets alone."""
    model = make_model(n_kv_heads=2)
    torch.manual_seed(2)
    src_a, src_b = torch.randint(4, VOCAB, (1, 6)), torch.randint(4, VOCAB, (1, 3))
    tgt_a, tgt_b = torch.randint(4, VOCAB, (1, 9)), torch.randint(4, VOCAB, (1, 5))
    with torch.no_grad():
        alone_b = model(src_b, torch.tensor([3]), tgt_b)[0]  # (T, V)
        alone_a = model(src_a, torch.tensor([6]), tgt_a)[0]
        cache = model.init_cache(model.encode(src_a, torch.tensor([6])))
        out_a = [model.decode_step(tgt_a[:, t], cache)[0] for t in range(3)]
        cache.extend(model.init_cache(model.encode(src_b, torch.tensor([3]))))  # b joins at a's step 3
        out_b = []
        for t in range(5):
            logits = model.decode_step(torch.stack([tgt_a[0, 3 + t], tgt_b[0, t]]), cache)
            out_a.append(logits[0])
            out_b.append(logits[1])
        cache.select_rows(torch.tensor([0]))  # b leaves, a goes on alone
        out_a.append(model.decode_step(tgt_a[:, 8], cache)[0])
    assert torch.allclose(torch.stack(out_b), alone_b, atol=1e-5)
    assert torch.allclose(torch.stack(out_a), alone_a, atol=1e-5)
