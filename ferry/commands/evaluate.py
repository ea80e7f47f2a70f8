"""``ferry evaluate``: translate a test set and score it with sacreBLEU."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory; default: the shipped en-de model")
    p.add_argument("-s", "--source-language", help="with no --model: pick the default model for this pair")
    p.add_argument("-t", "--target-language", help="with no --model: pick the default model for this pair")
    p.add_argument("--src", required=True, help="source file (plain or .gz)")
    p.add_argument(
        "--ref",
        required=True,
        nargs="+",
        help="reference translations, line-aligned (plain or .gz); several files = multi-reference",
    )
    p.add_argument("--beam-size", type=int, default=4, help="1 = greedy (default 4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default=None, help="float32 (default), float16 or bfloat16 (GPU)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N lines")
    p.add_argument("-o", "--output", help="also write the translations here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from ferry import default_model_dir
    from ferry.model.evaluate import evaluate
    from ferry.model.translator import load_translator

    model = args.model or default_model_dir(args.source_language, args.target_language)
    translator = load_translator(model, device=args.device, dtype=args.dtype)
    s = evaluate(
        translator,
        args.src,
        args.ref,
        beam_size=args.beam_size,
        batch_size=args.batch_size,
        limit=args.limit,
        output_file=args.output,
    )
    if args.json:
        print(json.dumps(s.__dict__))
    else:
        print(s.report())
    return 0
