"""Shared fixtures: a tiny synthetic language pair and a model trained on it (built once per session)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# One intra-op thread per test process unless told otherwise: test processes (and the servers they
# start) run side by side, and several OpenMP pools spinning on two cores are far slower than one.
torch.set_num_threads(int(os.environ.get("FERRY_TEST_THREADS", "1")))

# A made-up source language and its word-by-word "translation", reversed: the model must learn
# both a lexicon and a reordering, so attention and positions matter.
SRC_WORDS = "red blue green cat dog bird runs sleeps eats big small the a house tree water".split()
TGT_WORDS = "rot blau gruen katze hund vogel rennt schlaeft isst gross klein der ein haus baum wasser".split()
LEXICON = dict(zip(SRC_WORDS, TGT_WORDS))


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs, seen = [], set()
    while len(pairs) < n:
        words = rng.choices(SRC_WORDS, k=rng.randint(2, 6))
        src = " ".join(words)
        if src in seen:
            continue
        seen.add(src)
        pairs.append((src, " ".join(LEXICON[w] for w in reversed(words))))
    return pairs


TINY_PAIRS = make_pairs(48)


def train_tiny_checkpoint(out: Path, *, steps: int = 400, seed: int = 0) -> Path:
    """Train SentencePiece + a tiny Transformer on TINY_PAIRS until it reproduces them; save it."""
    import torch
    from ferry.model.checkpoint import CheckpointInfo, save_checkpoint
    from ferry.model.config import TransformerConfig
    from ferry.model.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_sentencepiece
    from ferry.model.transformer import Transformer

    out.mkdir(parents=True, exist_ok=True)
    corpus = [s for pair in TINY_PAIRS for s in pair]
    spm_path = train_sentencepiece(corpus * 4, out / "spm", vocab_size=64, model_type="word")
    tok = Tokenizer(spm_path)
    vocab = tok.source_vocab_size
    cfg = TransformerConfig(
        src_vocab_size=vocab,
        tgt_vocab_size=vocab,
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        encoder_layers=2,
        decoder_layers=2,
        ffn_dim=128,
        max_positions=64,
        dropout=0.0,
    )
    torch.manual_seed(seed)
    model = Transformer(cfg)
    src_ids = tok.encode_source([s for s, _ in TINY_PAIRS])
    tgt_ids = tok.encode_target([t for _, t in TINY_PAIRS])

    def pad(rows: list[list[int]]) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])

    src = pad(src_ids)
    src_len = torch.tensor([len(r) for r in src_ids])
    tgt_in = pad([[BOS_ID, *r] for r in tgt_ids])
    tgt_out = pad([[*r, EOS_ID] for r in tgt_ids])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        logits = model(src, src_len, tgt_in)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    info = CheckpointInfo(source_language="xx", target_language="yy", model_id="tiny", version="test")
    return save_checkpoint(out, model, info, source_spm=spm_path)


def _tiny_key() -> str:
    """Changes whenever this file or the model code changes, so a cached model is never stale."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in [Path(__file__), *sorted((root / "model").glob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny xx→yy model that translates TINY_PAIRS exactly.

    Built once and cached in ``$FERRY_TEST_CACHE`` (default: the system temp dir) under a key of the
    model code, so parallel test processes share it; set ``FERRY_TEST_CACHE=off`` to always rebuild."""
    cache = os.environ.get("FERRY_TEST_CACHE", str(Path(tempfile.gettempdir()) / "ferry-test-cache"))
    if cache == "off":
        return train_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")
    final = Path(cache) / f"tiny-{_tiny_key()}"
    if not (final / "config.json").exists():
        staging = Path(tempfile.mkdtemp(prefix="tiny-", dir=Path(cache).mkdir(parents=True, exist_ok=True) or cache))
        train_tiny_checkpoint(staging)
        try:
            staging.rename(final)  # atomic; another process may have won the race
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@pytest.fixture(scope="session")
def tiny_pairs() -> list[tuple[str, str]]:
    return TINY_PAIRS
