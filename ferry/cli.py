"""The ``ferry`` command. Subcommands live in ``ferry.commands.<name>``; each module is light to
import (argument definitions only) and imports torch or gRPC inside its ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ferry import __version__
from ferry.threads import configure_openmp

COMMANDS = {
    "translate": "Translate lines with a local model (--model) or a ferry server (--server)",
    "serve": "Run the gRPC translation server",
    "health": "Probe a server's grpc.health.v1 service (exit 0 serving, 2 unreachable, 4 not serving)",
    "train": "Train a SentencePiece vocabulary and a Transformer on parallel text",
    "evaluate": "Translate a test set and score it with sacreBLEU (BLEU, chrF)",
    "convert": "Convert between ferry and Hugging Face Marian checkpoint directories",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="ferry neural machine translation")
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"ferry.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_openmp()  # before any command imports torch
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        code = args._module.run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"ferry {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
