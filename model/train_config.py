"""``TrainConfig``: what defines a training run. Pure Python (no torch), so ``ferry train --help`` takes
its defaults from here without loading the trainer."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``train_config.json``)."""

    train_src: str
    """Training source text (plain or .gz), one sentence per line."""
    train_tgt: str
    """Training target text, line-aligned with ``train_src``."""
    valid_src: str
    """Validation source text."""
    valid_tgt: str
    """Validation target text."""
    out_dir: str
    """Run directory (created; reused by ``--resume``)."""
    source_language: str = "en"
    """Source language code written into the checkpoint."""
    target_language: str = "de"
    """Target language code written into the checkpoint."""
    preset: str = "small"
    """Architecture preset (see ``ferry.model.config.PRESETS``)."""
    vocab_size: int = 8000
    """Joint SentencePiece vocabulary size."""
    max_tokens: int = 4096
    """Padded tokens per batch (rows × longest side)."""
    lr: float = 1e-3
    """Peak learning rate, reached after ``warmup_steps``, then decayed as 1/sqrt(step)."""
    warmup_steps: int = 2000
    """Linear warm-up steps."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy."""
    clip_norm: float = 1.0
    """Gradient norm clipping (0 disables)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_epochs: int = 40
    """Stop after this many epochs."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = no limit)."""
    save_every: int = 500
    """Save a resumable state every N steps (and at each epoch end)."""
    keep_snapshots: int = 5
    """Weight snapshots kept for checkpoint averaging."""
    average_last: int = 0
    """At the end, average the last K snapshots into ``averaged/`` (0 = off)."""
    valid_beam_size: int = 1
    """Beam for the per-epoch validation BLEU (1 = greedy, fast)."""
    valid_limit: int = 0
    """Translate only the first N validation sentences for BLEU (0 = all)."""
    max_length: int = 128
    """Drop training pairs longer than this many tokens on either side."""
    seed: int = 1
    """Seed for initialisation, data order and dropout."""
    weights_dtype: str = "float16"
    """dtype of the exported checkpoints' weights (``float16`` halves the size)."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``; mixed precision (bfloat16 autocast) on GPU."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    init_from: str = ""
    """Warm start: a ferry model directory whose weights and SentencePiece model the run starts from
    (its architecture replaces ``preset``; the optimizer starts fresh). Empty = random initialisation."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls(**json.loads(path.read_text()))
