"""``ferry translate --server``: lines through a ferry server's TranslateStream, order kept."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TextIO

from .client import TranslationClient
from .errors import FerryError


def _lines(src: TextIO) -> Iterator[str]:
    for line in src:
        yield line.rstrip("\n").rstrip("\r")


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def translate_remote(args: argparse.Namespace) -> int:
    """Translate stdin (or ``-i``) to stdout (or ``-o``) through ``args.server``; 1 on a server error."""
    from tqdm import tqdm

    if args.model:
        raise ValueError("--model is for local translation; with --server the model is picked by -s/-t")
    token = args.token or os.environ.get("FERRY_TOKEN")
    client = TranslationClient(args.server, timeout=args.timeout, ca_cert=args.tls_ca, token=token)
    with ExitStack() as stack:
        stack.enter_context(client)
        src: TextIO = stack.enter_context(open(args.input, encoding="utf-8")) if args.input else sys.stdin
        dst: TextIO = stack.enter_context(open(args.output, "w", encoding="utf-8")) if args.output else sys.stdout
        total = _count_lines(args.input) if args.input else None
        bar = stack.enter_context(tqdm(total=total, unit="line", disable=not args.input, file=sys.stderr))
        results = client.translate_stream(
            _lines(src),
            args.source_language,
            args.target_language,
            batch_size=args.batch_size,
            beam_size=args.beam_size,
            max_length=args.max_length,
            return_scores=args.scores,
            timeout=args.timeout,
        )
        try:
            for done, r in enumerate(results, 1):
                dst.write(f"{r.score:.4f}\t{r.text}\n" if args.scores else f"{r.text}\n")
                if done % args.batch_size == 0:
                    dst.flush()
                bar.update(1)
        except FerryError as err:
            print(f"ferry translate: error: {err}", file=sys.stderr)
            return 1
        dst.flush()
    return 0
