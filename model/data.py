"""Parallel text: reading (plain or gzip), token-based length-bucketed batches, padding."""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


def read_lines(path: str | Path) -> list[str]:
    """All lines of a UTF-8 text file, ``.gz`` or plain, without line ends."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ValueError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; they must be parallel")
    return src, tgt


@dataclass
class Batch:
    src: Tensor
    """(B, S) source ids, EOS-terminated, right-padded."""
    src_lengths: Tensor
    """(B,)"""
    tgt_in: Tensor
    """(B, T) decoder inputs: start token + target."""
    tgt_out: Tensor
    """(B, T) labels: target + EOS, padded with pad_id (ignored by the loss)."""
    num_tokens: int
    """Real target tokens (labels that count)."""

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.src.to(device, non_blocking=True),
            self.src_lengths.to(device, non_blocking=True),
            self.tgt_in.to(device, non_blocking=True),
            self.tgt_out.to(device, non_blocking=True),
            self.num_tokens,
        )


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out  # (B, W)


def make_batch(
    src_rows: Sequence[Sequence[int]],
    tgt_rows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    start_id: int,
    eos_id: int,
) -> Batch:
    """``src_rows`` already end in EOS; ``tgt_rows`` are bare target ids."""
    return Batch(
        src=pad_rows(src_rows, pad_id),
        src_lengths=torch.tensor([len(r) for r in src_rows], dtype=torch.long),
        tgt_in=pad_rows([[start_id, *r] for r in tgt_rows], pad_id),
        tgt_out=pad_rows([[*r, eos_id] for r in tgt_rows], pad_id),
        num_tokens=sum(len(r) + 1 for r in tgt_rows),
    )


def token_batches(
    src_lengths: Sequence[int],
    tgt_lengths: Sequence[int],
    *,
    max_tokens: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[list[int]]:
    """Group example indices into batches of similar length whose padded size
    (rows × longest side) stays within ``max_tokens``. Deterministic for (seed, epoch), so a
    resumed run sees exactly the batches it would have seen."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(src_lengths)))
    if shuffle:
        rng.shuffle(order)  # random tie-breaking among equal lengths
    order.sort(key=lambda i: (tgt_lengths[i], src_lengths[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        size = max(src_lengths[i], tgt_lengths[i] + 1)
        if current and max(longest, size) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def iterate_batches(
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    batches: Sequence[Sequence[int]],
    *,
    start: int = 0,
    pad_id: int,
    start_id: int,
    eos_id: int,
) -> Iterator[Batch]:
    for idx in batches[start:]:
        yield make_batch(
            [src_ids[i] for i in idx], [tgt_ids[i] for i in idx], pad_id=pad_id, start_id=start_id, eos_id=eos_id
        )
