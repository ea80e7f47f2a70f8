"""``ferry translate --server``: lines through a ferry server's TranslateStream, order kept."""

from __future__ import annotations

import os
import sys

from ferry.model.options import DecodeOptions

from .client import TranslationClient
from .errors import FerryError
from .lines import read_document, translate_lines, write_document


def translate_remote(
    server: str,
    *,
    source_language: str,
    target_language: str,
    options: DecodeOptions | None = None,
    input: str | None = None,
    output: str | None = None,
    batch_size: int = 32,
    timeout: float | None = 60.0,
    token: str | None = None,
    tls_ca: str | None = None,
) -> int:
    """Translate the lines of ``input`` (default stdin) to ``output`` (default stdout) through the
    server at ``server`` (HOST:PORT), ``batch_size`` lines per stream message; ``token`` defaults to
    ``$FERRY_TOKEN``. Returns 0, or 1 after printing the server's error."""
    options = options if options is not None else DecodeOptions()
    token = token or os.environ.get("FERRY_TOKEN")
    text = options.text
    with TranslationClient(server, timeout=timeout, ca_cert=tls_ca, token=token) as client:
        try:
            if text.format == "html":  # the whole input is one document
                document = read_document(input)
                (result,) = client.translate(
                    [document],
                    source_language,
                    target_language,
                    beam_size=options.beam_size,
                    max_length=options.max_length,
                    length_penalty=options.length_penalty,
                    timeout=timeout,
                    text_format="html",
                    split_sentences=text.split_sentences,
                )
                write_document(result.text, output)
                return 0
            translate_lines(
                lambda lines: client.translate_stream(
                    lines,
                    source_language,
                    target_language,
                    batch_size=batch_size,
                    beam_size=options.beam_size,
                    max_length=options.max_length,
                    length_penalty=options.length_penalty,
                    num_hypotheses=options.num_hypotheses,
                    return_scores=options.return_scores,
                    timeout=timeout,
                    split_sentences=text.split_sentences,
                ),
                input=input,
                output=output,
                scores=options.return_scores,
                flush_every=batch_size,
            )
        except FerryError as err:
            print(f"ferry translate: error: {err}", file=sys.stderr)
            return 1
    return 0
