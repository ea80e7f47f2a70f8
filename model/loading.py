"""Open any supported model directory as a ``Translator`` (format detected from its files)."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import is_ferry_checkpoint
from .translator import Translator


def load_translator(path: str | Path, *, device: str | torch.device = "auto", dtype: str | None = None) -> Translator:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {root} does not exist")
    if is_ferry_checkpoint(root):
        return Translator(root, device, dtype=dtype)
    raise ValueError(f"{root} is not a ferry model directory (no ferry config.json)")
