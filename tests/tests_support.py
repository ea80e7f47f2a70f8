"""Helpers shared by test modules (imported as ``tests_support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import gzip
from pathlib import Path


def write_corpus(root: Path, pairs: list[tuple[str, str]]) -> dict[str, Path]:
    """train.{src,tgt}.gz (gzip, to exercise that path) and valid.{src,tgt} (plain) files."""
    files = {}
    for side, idx in (("src", 0), ("tgt", 1)):
        train = root / f"train.{side}.gz"
        with gzip.open(train, "wt", encoding="utf-8") as f:
            f.writelines(p[idx] + "\n" for p in pairs)
        valid = root / f"valid.{side}"
        valid.write_text("".join(p[idx] + "\n" for p in pairs[:8]), encoding="utf-8")
        files[f"train.{side}"], files[f"valid.{side}"] = train, valid
    return files
