"""``ferry convert``: ferry checkpoint ⇄ Hugging Face Marian (OPUS-MT) directory, or to CTranslate2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--to",
        required=True,
        choices=("ferry", "marian", "ctranslate2"),
        help="output format: ferry checkpoint, Hugging Face Marian directory (Pegasus layout for pre-norm "
        "models), or a CTranslate2 model (through its transformers converter)",
    )
    p.add_argument("input_dir", metavar="INPUT_DIR", help="model directory, ferry or Marian (detected)")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="directory to write (must be empty or absent)")
    p.add_argument("--quantization", help="CTranslate2 weight type (int8, float16, ...); --to ctranslate2 only")
    p.add_argument("--force", action="store_true", help="write into OUTPUT_DIR even if it is not empty")


def run(args: argparse.Namespace) -> int:
    from ferry.model.loading import convert, detect_format

    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"{out} is not empty; pass --force to write into it anyway")
    fmt = detect_format(args.input_dir)
    written = convert(args.input_dir, out, to=args.to, quantization=args.quantization)
    print(f"converted {args.input_dir} ({fmt}) -> {written} ({args.to})", file=sys.stderr)
    return 0
