"""``ferry translate``: one line in, one line out, order kept; local model or remote server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TextIO


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (ferry or Marian); default: the shipped en-de model")
    p.add_argument("--server", metavar="HOST:PORT", help="translate through a ferry server instead of locally")
    p.add_argument("-s", "--source-language", default="en", help="source language (with --server)")
    p.add_argument("-t", "--target-language", default="de", help="target language (with --server)")
    p.add_argument("--beam-size", type=int, default=4, help="beam width, 1 = greedy (default 4)")
    p.add_argument("--max-length", type=int, default=None, help="most output tokens per sentence")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (local model)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (GPU only for 16-bit)")
    p.add_argument("-i", "--input", help="input file (default stdin)")
    p.add_argument("-o", "--output", help="output file (default stdout)")
    p.add_argument("--scores", action="store_true", help="prefix each line with its score and a tab")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without any answer before giving up (--server)")
    p.add_argument("--token", help="bearer token for the server (or FERRY_TOKEN)")
    p.add_argument("--tls-ca", help="CA certificate file: connect with TLS (--server)")


def batches(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in lines:
        batch.append(line.rstrip("\n").rstrip("\r"))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} is out of range; allowed: >= 1")
    if args.server:
        from ferry.client.cli import translate_remote

        return translate_remote(args)

    from tqdm import tqdm

    from ferry import default_model_dir
    from ferry.model.translator import load_translator

    translator = load_translator(args.model or default_model_dir(), device=args.device, dtype=args.dtype)
    with ExitStack() as stack:
        src: TextIO = stack.enter_context(open(args.input, encoding="utf-8")) if args.input else sys.stdin
        dst: TextIO = stack.enter_context(open(args.output, "w", encoding="utf-8")) if args.output else sys.stdout
        total = count_lines(args.input) if args.input else None
        bar = tqdm(total=total, unit="line", disable=not args.input, file=sys.stderr)
        for batch in batches(iter(src), args.batch_size):
            results = translator.translate_batch(
                batch, beam_size=args.beam_size, max_length=args.max_length, return_scores=args.scores
            )
            for r in results:
                dst.write(f"{r.score:.4f}\t{r.text}\n" if args.scores else f"{r.text}\n")
            dst.flush()
            bar.update(len(batch))
        bar.close()
    return 0
