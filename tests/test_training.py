"""`ferry train` / `ferry evaluate` on a tiny synthetic corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_pairs: list[tuple[str, str]]) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"), tiny_pairs)


def train_cfg(corpus: dict[str, Path], out: Path, **extra: object):  # type: ignore[no-untyped-def]
    from ferry.model.train import TrainConfig

    base: dict[str, object] = dict(
        train_src=str(corpus["train.src"]), train_tgt=str(corpus["train.tgt"]),
        valid_src=str(corpus["valid.src"]), valid_tgt=str(corpus["valid.tgt"]), out_dir=str(out),
        source_language="xx", target_language="yy", preset="tiny", vocab_size=60, max_tokens=200,
        warmup_steps=5, lr=3e-3, save_every=4, max_epochs=100, valid_limit=8, weights_dtype="float32",
    )
    base.update(extra)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_training_lowers_loss_saves_and_resumes_exactly(corpus: dict[str, Path], tmp_path: Path) -> None:
    from ferry.model import Translator
    from ferry.model.train import Trainer

    straight = Trainer(train_cfg(corpus, tmp_path / "a", max_steps=12))
    before = straight.validation_loss()
    straight.train()
    assert straight.progress.step == 12
    assert straight.validation_loss() < before

    first = Trainer(train_cfg(corpus, tmp_path / "b", max_steps=8))
    first.train()
    assert json.loads((tmp_path / "b/state/progress.json").read_text())["step"] == 8
    with pytest.raises(ValueError, match="--resume"):
        Trainer(train_cfg(corpus, tmp_path / "b", max_steps=12))
    resumed = Trainer(train_cfg(corpus, tmp_path / "b", max_steps=12), resume=True)
    assert resumed.progress.step == 8
    resumed.train()
    assert resumed.progress.step == 12
    # Same data order, optimizer moments and dropout RNG: the resumed run lands on the same weights.
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert (p - q).abs().max().item() < 1e-5, name
    t = Translator(tmp_path / "b" / "last", device="cpu")
    assert t.info.source_language == "xx" and t.info.extra["trained_steps"] == 12
    with pytest.raises(ValueError, match="changed settings"):
        Trainer(train_cfg(corpus, tmp_path / "b", lr=1.0), resume=True)


def test_evaluate_prints_bleu_chrf_and_signature(tiny_checkpoint: Path, corpus: dict[str, Path]) -> None:
    cmd = [sys.executable, "-m", "ferry", "evaluate", "--model", str(tiny_checkpoint), "--src",
           str(corpus["valid.src"]), "--ref", str(corpus["valid.tgt"]), "--beam-size", "2", "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "BLEU = 100.00" in out.stdout  # the tiny model reproduces its pairs
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out.stdout
    assert "chrF = 100.00" in out.stdout and "nc:6|nw:0|space:no|version:" in out.stdout
