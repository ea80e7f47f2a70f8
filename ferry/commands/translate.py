"""``ferry translate``: one line in, one line out, order kept; local model or remote server. Both go
through the same line I/O (``ferry.client.lines``) and the same options type (``DecodeOptions``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from functools import partial


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ferry.model.options import DecodeOptions  # light: no torch at import time
    from ferry.text import TextOptions

    p.add_argument("--model", help="model directory (ferry or Marian); default: the shipped model for -s/-t")
    p.add_argument("--server", metavar="HOST:PORT", help="translate through a ferry server instead of locally")
    p.add_argument(
        "-s",
        "--source-language",
        default="en",
        help=(
            "source language (picks the server's or the default local model); "
            "auto: detect each line's language and use the model for it"
        ),
    )
    p.add_argument(
        "-t", "--target-language", default="de", help="target language (picks the server's or the default local model)"
    )
    p.add_argument(
        "--beam-size", type=int, default=DecodeOptions.beam_size, help="beam width, 1 = greedy (default %(default)s)"
    )
    p.add_argument("--max-length", type=int, default=DecodeOptions.max_length, help="most output tokens per sentence")
    p.add_argument("--batch-size", type=int, default=32, help="lines per batch (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (local model)")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (GPU only for 16-bit), int8 (CPU)")
    p.add_argument("-i", "--input", help="input file (default stdin)")
    p.add_argument("-o", "--output", help="output file (default stdout)")
    p.add_argument("--scores", action="store_true", help="prefix each line with its score and a tab")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without any answer before giving up (--server)")
    p.add_argument("--token", help="bearer token for the server (or FERRY_TOKEN)")
    p.add_argument("--tls-ca", help="CA certificate file: connect with TLS (--server)")
    p.add_argument(
        "--format",
        choices=("text", "html"),
        default=TextOptions.format,
        help="text: each line is a text (split into sentences); html: the whole input is one HTML document",
    )
    p.add_argument("--no-split", action="store_true", help="translate each line as one sentence (no splitting)")


def run(args: argparse.Namespace) -> int:
    from ferry.client.lines import batches, read_document, translate_lines, write_document
    from ferry.model.options import DecodeOptions

    if args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} is out of range; allowed: >= 1")
    from ferry.text import TextOptions

    auto = args.source_language.strip().lower() == "auto"
    text = TextOptions(
        split_sentences=not args.no_split, format=args.format, language=None if auto else args.source_language
    )
    options = DecodeOptions(beam_size=args.beam_size, max_length=args.max_length, return_scores=args.scores, text=text)
    if args.server:
        from ferry.client.cli import translate_remote

        if args.model:
            raise ValueError("--model is for local translation; with --server the model is picked by -s/-t")
        return translate_remote(
            args.server,
            source_language=args.source_language,
            target_language=args.target_language,
            options=options,
            input=args.input,
            output=args.output,
            batch_size=args.batch_size,
            timeout=args.timeout,
            token=args.token,
            tls_ca=args.tls_ca,
        )

    from ferry import default_model_dir
    from ferry.model.options import TranslationResult
    from ferry.model.translator import load_translator

    if auto:
        from ferry.commands.translate_auto import AutoRouter

        router = AutoRouter(args.model, args.target_language, device=args.device, dtype=args.dtype)
        translate_batch = partial(router.translate, options=options)
    else:
        translator = load_translator(
            args.model or default_model_dir(args.source_language, args.target_language),
            device=args.device,
            dtype=args.dtype,
        )
        translate_batch = partial(translator.translate, options=options)

    if args.format == "html":  # the whole input is one document
        write_document(translate_batch([read_document(args.input)])[0].text, args.output)
        return 0

    def translate(lines: Iterator[str]) -> Iterator[TranslationResult]:
        for batch in batches(lines, args.batch_size):
            yield from translate_batch(batch)

    translate_lines(translate, input=args.input, output=args.output, scores=args.scores, flush_every=args.batch_size)
    return 0
