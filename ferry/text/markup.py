"""HTML → tokens with their exact source bytes, grouped into translatable runs.

The stdlib ``html.parser`` finds the tokens; each token's raw text is the slice of the input between its
start and the next token's start, so concatenating every token's raw text gives the input back byte for
byte, whatever the parser made of it. A *run* is the text between two block boundaries (any tag that is
not an inline element such as ``b``, ``a`` or ``span``): its text is split into sentences, its inline
tags travel with the sentence they sit in. Elements that must stay untouched (``script``, ``style``,
``pre``, ``code``, ``translate="no"``, class ``notranslate``) are copied verbatim: as a block if they are
block elements, as an *atom* (kept whole inside its sentence) if they are inline.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Literal

VOID = frozenset("area base br col embed hr img input link meta param source track wbr keygen frame".split())
"""Elements that never have an end tag."""
INLINE = frozenset(
    "a abbr b bdi bdo big cite code data del dfn em font i ins kbd label mark q s samp small span strike "
    "strong sub sup time tt u var img wbr".split()
)
"""Elements that live inside a sentence (everything else separates runs)."""
UNTOUCHED = frozenset({"script", "style", "pre", "code", "textarea"})
"""Elements copied byte for byte, whatever their attributes."""

Kind = Literal["data", "entity", "start", "end", "startend", "comment", "other"]


@dataclass
class Token:
    """One parser event and the exact input text it came from."""

    kind: Kind
    raw: str
    tag: str = ""
    attrs: list[tuple[str, str | None]] = field(default_factory=list)

    def text(self) -> str:
        """Decoded text of a data or entity token."""
        return html.unescape(self.raw) if self.kind == "entity" else self.raw


class _Collector(HTMLParser):
    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)
        self.events: list[tuple[int, Kind, str, list[tuple[str, str | None]]]] = []
        self._line_starts = [0]
        for i, ch in enumerate(source):
            if ch == "\n":
                self._line_starts.append(i + 1)

    def _add(self, kind: Kind, tag: str = "", attrs: list[tuple[str, str | None]] | None = None) -> None:
        line, col = self.getpos()
        self.events.append((self._line_starts[line - 1] + col, kind, tag, attrs or []))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._add("start", tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._add("startend", tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self._add("end", tag)

    def handle_data(self, data: str) -> None:
        self._add("data")

    def handle_entityref(self, name: str) -> None:
        self._add("entity")

    def handle_charref(self, name: str) -> None:
        self._add("entity")

    def handle_comment(self, data: str) -> None:
        self._add("comment")

    def handle_decl(self, decl: str) -> None:
        self._add("other")

    def handle_pi(self, data: str) -> None:
        self._add("other")

    def unknown_decl(self, data: str) -> None:
        self._add("other")


def tokenize(source: str) -> list[Token]:
    """Tokens whose raw texts concatenate to ``source`` exactly.

    Raises ValueError if the parser gives up (it is lenient; this is a last resort).
    """
    parser = _Collector(source)
    try:
        parser.feed(source)
        parser.close()
    except Exception as e:  # html.parser has no documented error type; never let it escape as a crash
        raise ValueError(f"could not parse the HTML input ({e}); send it as plain text or repair the markup") from e
    events = sorted(parser.events, key=lambda ev: ev[0])  # stable: same-offset events keep their order
    tokens: list[Token] = []
    if events and events[0][0] > 0:
        tokens.append(Token("data", source[: events[0][0]]))
    for i, (start, kind, tag, attrs) in enumerate(events):
        end = events[i + 1][0] if i + 1 < len(events) else len(source)
        if end <= start:  # two events at one offset (should not happen); keep the bytes with the later one
            continue
        tokens.append(Token(kind, source[start:end], tag, attrs))
    if not events and source:
        tokens.append(Token("data", source))
    return tokens


def is_untouched(tok: Token) -> bool:
    """A start tag whose element is copied byte for byte."""
    if tok.tag in UNTOUCHED:
        return True
    for name, value in tok.attrs:
        if name == "translate" and (value or "").strip().lower() == "no":
            return True
        if name == "class" and "notranslate" in (value or "").split():
            return True
    return False


@dataclass
class Atom:
    """An untouched inline element kept whole inside its sentence."""

    raw: str
    text: str
    """Its decoded text (what the model sees in the sentence)."""


RunItem = Token | Atom
Part = str | list[RunItem]
"""A document part: raw text copied as it is, or a run of text and inline items."""


def _consume_element(tokens: list[Token], i: int) -> int:
    """Index after the element whose start tag is ``tokens[i]`` (end of input if it is never closed)."""
    stack = [tokens[i].tag]
    j = i + 1
    while j < len(tokens) and stack:
        tok = tokens[j]
        if tok.kind == "start" and tok.tag not in VOID:
            stack.append(tok.tag)
        elif tok.kind == "end" and tok.tag in stack:
            while stack.pop() != tok.tag:
                pass
        j += 1
    return j


LOOKAHEAD = 32
"""Tokens an inline element may span and still be checked for words (bounds the work on broken markup)."""


def _no_words(tokens: list[Token], i: int) -> bool:
    """An inline element whose text has no letters (a footnote mark ``<sup>1</sup>``, a symbol): kept whole,
    since the model drops or mangles such fragments."""
    if tokens[i].tag not in INLINE:
        return False
    j = _consume_element(tokens[: i + LOOKAHEAD], i)
    inner = tokens[i + 1 : j]
    if j == min(len(tokens), i + LOOKAHEAD) and not (inner and inner[-1].kind == "end"):
        return False  # not closed within reach
    text = "".join(t.text() for t in inner if t.kind in ("data", "entity"))
    return bool(text.strip()) and not any(ch.isalpha() for ch in text)


def parts(tokens: list[Token]) -> list[Part]:
    """Split the token stream into raw parts and runs (in order; raw texts concatenate to the input)."""
    out: list[Part] = []
    run: list[RunItem] = []

    def flush() -> None:
        nonlocal run
        if run:
            out.append(run)
            run = []

    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind == "start" and tok.tag not in VOID and (is_untouched(tok) or _no_words(tokens, i)):
            j = _consume_element(tokens, i)
            raw = "".join(t.raw for t in tokens[i:j])
            if tok.tag in INLINE:
                run.append(Atom(raw, "".join(t.text() for t in tokens[i:j] if t.kind in ("data", "entity"))))
            else:
                flush()
                out.append(raw)
            i = j
            continue
        inline_tag = tok.kind in ("start", "end", "startend") and tok.tag in INLINE
        if tok.kind in ("data", "entity", "comment") or inline_tag:
            run.append(tok)
        else:
            flush()
            out.append(tok.raw)
        i += 1
    flush()
    return out
