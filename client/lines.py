"""Line-oriented translation I/O shared by ``ferry translate --model`` and ``--server``: read lines
from a file or stdin, write one output line per input line (order kept, optionally ``score<TAB>``),
flush as results arrive, and show a progress bar on stderr when reading a file. No torch, no gRPC."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from typing import Protocol, TextIO


class Scored(Protocol):
    """A translation as both the Translator (``TranslationResult``) and the client (``Translation``) give it."""

    @property
    def text(self) -> str: ...

    @property
    def score(self) -> float | None: ...


def read_lines(src: Iterable[str]) -> Iterator[str]:
    """Lines without their line ending (``\\n`` or ``\\r\\n``)."""
    for line in src:
        yield line.rstrip("\n").rstrip("\r")


def batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """``lines`` in lists of ``size`` (the last may be shorter)."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def format_line(result: Scored, *, scores: bool) -> str:
    return f"{result.score or 0.0:.4f}\t{result.text}\n" if scores else f"{result.text}\n"


def translate_lines(
    translate: Callable[[Iterator[str]], Iterable[Scored]],
    *,
    input: str | None = None,
    output: str | None = None,
    scores: bool = False,
    flush_every: int = 32,
) -> int:
    """Feed the lines of ``input`` (default stdin) to ``translate``, which yields one result per line
    in order, and write them to ``output`` (default stdout). Returns the number of lines written."""
    from tqdm import tqdm

    with ExitStack() as stack:
        src: TextIO = stack.enter_context(open(input, encoding="utf-8")) if input else sys.stdin
        dst: TextIO = stack.enter_context(open(output, "w", encoding="utf-8")) if output else sys.stdout
        total = count_lines(input) if input else None
        bar = stack.enter_context(tqdm(total=total, unit="line", disable=not input, file=sys.stderr))
        done = 0
        for done, result in enumerate(translate(read_lines(src)), 1):
            dst.write(format_line(result, scores=scores))
            if done % flush_every == 0:
                dst.flush()
            bar.update(1)
        dst.flush()
    return done


def read_document(path: str | None) -> str:
    """The whole input (file, or stdin) as one text, line endings untouched (``--format html``)."""
    if path:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    return sys.stdin.read()


def write_document(text: str, path: str | None) -> None:
    """Write ``text`` as it is to ``path`` (or stdout)."""
    if path:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
