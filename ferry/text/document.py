"""An HTML document as sentences to translate and a plan to rebuild it around their translations.

Each run (see markup.py) becomes plain text plus *events* (text, inline open/close tags, points such as
``<img>`` or comments, untouched atoms) at plain-text offsets. The run's plain text is split into
sentences; every event belongs either to a sentence (its tag is re-placed in the translation, see align.py)
or to the whitespace gap between sentences (copied as it is, in source order). Besides the sentences the
document asks for *hints*: the text of each inline element inside a sentence, translated in the same batch
so its words can be found in the sentence's translation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ferry.text import align
from ferry.text.markup import VOID, Atom, Part, RunItem, Token, parts, tokenize
from ferry.text.split import sentence_spans

EventKind = Literal["text", "open", "close", "point", "atom"]
_SPACES = re.compile(r"[ \t\r\n\f]+")


@dataclass
class Event:
    """Something at a plain-text offset of a run."""

    kind: EventKind
    start: int
    end: int
    raw: str
    token: RunItem | None = None
    partner: int = -1
    """For open/close: index of the matching close/open event."""


@dataclass
class Node:
    """An inline element clipped to one sentence (plain-text range), or a point or atom inside it."""

    start: int
    end: int
    open_raw: str = ""
    close_raw: str = ""
    kind: Literal["element", "point", "atom", "root"] = "element"
    children: list[Node] = field(default_factory=list)
    hint: int = -1
    """Index of this element's hint among the document's hints, -1 if none."""
    event: int = -1
    """Index of the open event it comes from (elements opened inside the sentence)."""


def collapse(text: str) -> str:
    """Runs of ASCII whitespace → one space (HTML does not show them), stripped; no-break spaces kept."""
    return _SPACES.sub(" ", text).strip(" ")


class Run:
    """Text and inline markup between two block boundaries."""

    def __init__(self, items: list[RunItem]) -> None:
        self.events: list[Event] = []
        self.entities: dict[str, str] = {}
        plain: list[str] = []
        pos = 0
        opens: list[int] = []
        for item in items:
            if isinstance(item, Atom):
                if item.text.strip():
                    self.events.append(Event("atom", pos, pos + len(item.text), item.raw, item))
                    plain.append(item.text)
                    pos += len(item.text)
                else:
                    self.events.append(Event("point", pos, pos, item.raw, item))
            elif item.kind in ("data", "entity"):
                text = item.text()
                if item.kind == "entity" and len(text) == 1:
                    self.entities.setdefault(text, item.raw)
                self.events.append(Event("text", pos, pos + len(text), item.raw, item))
                plain.append(text)
                pos += len(text)
            elif item.kind == "start" and item.tag not in VOID:
                opens.append(len(self.events))
                self.events.append(Event("open", pos, pos, item.raw, item))
            elif item.kind == "end" and any(_tag(self.events[k]) == item.tag for k in opens):
                while True:
                    k = opens.pop()
                    if _tag(self.events[k]) == item.tag:
                        break
                    self.events[k].kind = "point"  # closed implicitly: keep the tag where it is
                close = len(self.events)
                self.events.append(Event("close", pos, pos, item.raw, item, partner=k))
                self.events[k].partner = close
                if self.events[k].start == pos:  # an element without text is just markup at one place
                    self.events[k].kind = self.events[close].kind = "point"
            else:
                self.events.append(Event("point", pos, pos, item.raw, item))
        for k in opens:  # never closed within the run
            self.events[k].kind = "point"
        self.plain = "".join(plain)

    def spans(self, split_sentences: bool, language: str | None) -> list[tuple[int, int]]:
        """Sentence spans of the plain text; an atom never straddles two sentences."""
        plain = self.plain
        if not plain.strip():
            return []
        if split_sentences:
            spans = sentence_spans(plain.replace("\n", " ").replace("\r", " ").replace("\t", " "), language)
        else:
            lead = len(plain) - len(plain.lstrip())
            spans = [(lead, lead + len(plain.strip()))]
        atoms = [ev for ev in self.events if ev.kind == "atom"]
        for ev in atoms:
            hit = [k for k, (a, b) in enumerate(spans) if a < ev.end and ev.start < b]
            if len(hit) > 1:
                merged = (spans[hit[0]][0], spans[hit[-1]][1])
                spans = [*spans[: hit[0]], merged, *spans[hit[-1] + 1 :]]
        return [span for span in spans if not self._only_atoms(span, atoms)]

    def _only_atoms(self, span: tuple[int, int], atoms: list[Event]) -> bool:
        """Nothing to translate: every non-space character of ``span`` is inside an untouched atom."""
        a, b = span
        covered = [False] * (b - a)
        for ev in atoms:
            for i in range(max(a, ev.start), min(b, ev.end)):
                covered[i - a] = True
        return all(c or self.plain[a + i].isspace() for i, c in enumerate(covered))


def _tag(ev: Event) -> str:
    return ev.token.tag if isinstance(ev.token, Token) else ""


def _region(ev: Event, spans: Sequence[tuple[int, int]]) -> tuple[str, int]:
    """("sentence", k) or ("gap", k) (gap k lies before sentence k; gap len(spans) after the last)."""
    for k, (a, b) in enumerate(spans):
        inside = {
            "open": a <= ev.start < b,
            "close": a < ev.start <= b,
            "point": a < ev.start < b,
            "atom": a <= ev.start and ev.end <= b,
        }.get(ev.kind, False)
        if inside:
            return "sentence", k
    for k, (a, _) in enumerate(spans):
        if ev.start <= a:
            return "gap", k
    return "gap", len(spans)


@dataclass
class Sentence:
    """One sentence of a run: what the model reads and the inline tree to put back."""

    text: str
    root: Node
    plain: str
    span: tuple[int, int]


def _tree(run: Run, span: tuple[int, int], indices: list[int]) -> Node:
    """Inline tree of one sentence from its events (indices into ``run.events``, in source order)."""
    a, b = span
    root = Node(a, b, kind="root")
    stack = [root]
    for index in indices:
        ev = run.events[index]
        if ev.kind == "open":
            end = min(run.events[ev.partner].start, b) if ev.partner >= 0 else b
            node = Node(ev.start, end, open_raw=ev.raw, event=index)
            stack[-1].children.append(node)
            stack.append(node)
        elif ev.kind == "close":
            if len(stack) > 1 and stack[-1].event == ev.partner:
                stack.pop().close_raw = ev.raw
            else:  # opened before this sentence: wraps everything so far
                node = Node(a, ev.start, close_raw=ev.raw, children=root.children)
                root.children = [node]
                stack = [root]
        elif ev.kind == "point":
            stack[-1].children.append(Node(ev.start, ev.start, open_raw=ev.raw, kind="point"))
        elif ev.kind == "atom":
            stack[-1].children.append(Node(ev.start, ev.end, open_raw=ev.raw, kind="atom"))
    return root


def _escape(text: str, entities: dict[str, str]) -> str:
    """Translation text as HTML: characters written as entities in the source are written so again."""
    out = []
    for ch in text:
        if ch in entities:
            out.append(entities[ch])
        elif ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        else:
            out.append(ch)
    return "".join(out)


class Document:
    """A parsed HTML text: its sentences, hints, and how to rebuild it."""

    def __init__(self, source: str, *, split_sentences: bool = True, language: str | None = None) -> None:
        self.parts: list[Part] = parts(tokenize(source))
        self.runs: dict[int, tuple[Run, list[tuple[int, int]], list[list[Event]], list[Sentence]]] = {}
        """Part index → (run, sentence spans, events of each gap, sentences)."""
        self.sentences: list[str] = []
        self.hints: list[str] = []
        for p, part in enumerate(self.parts):
            if isinstance(part, str):
                continue
            run = Run(part)
            spans = run.spans(split_sentences, language)
            gaps: list[list[Event]] = [[] for _ in range(len(spans) + 1)]
            per_sentence: list[list[int]] = [[] for _ in spans]
            for index, ev in enumerate(run.events):
                if ev.kind == "text":
                    for gap in gaps:
                        gap.append(ev)  # clipped to each gap when rendered
                    continue
                where, k = _region(ev, spans)
                if where == "sentence":
                    per_sentence[k].append(index)
                else:
                    gaps[k].append(ev)
            sentences = []
            for span, events in zip(spans, per_sentence):
                root = _tree(run, span, events)
                self._add_hints(run, root)
                sentence = Sentence(collapse(run.plain[span[0] : span[1]]), root, run.plain, span)
                sentences.append(sentence)
                self.sentences.append(sentence.text)
            self.runs[p] = (run, spans, gaps, sentences)

    def _add_hints(self, run: Run, node: Node) -> None:
        for child in node.children:
            if child.kind == "element" and child.open_raw and child.close_raw:
                snippet = collapse(run.plain[child.start : child.end])
                whole = (child.start, child.end) == (node.start, node.end)
                if snippet and not whole:
                    child.hint = len(self.hints)
                    self.hints.append(snippet)
            self._add_hints(run, child)

    def rebuild(self, translations: Sequence[str], hints: Sequence[str]) -> str:
        """The document with every sentence replaced by its translation and the markup put back."""
        out: list[str] = []
        it = iter(translations)
        for p, part in enumerate(self.parts):
            if isinstance(part, str):
                out.append(part)
                continue
            run, spans, gaps, sentences = self.runs[p]
            bounds = [0] + [x for span in spans for x in span] + [len(run.plain)]
            for g, events in enumerate(gaps):
                lo, hi = bounds[2 * g], bounds[2 * g + 1]
                for ev in events:
                    out.append(_clip(ev, lo, hi) if ev.kind == "text" else ev.raw)
                if g < len(sentences):
                    out.append(_render(sentences[g], next(it), hints, run.entities))
        return "".join(out)


def _clip(ev: Event, lo: int, hi: int) -> str:
    """Raw source of the part of a text event inside plain range [lo, hi)."""
    if isinstance(ev.token, Token) and ev.token.kind == "data":  # raw == text
        s, e = max(ev.start, lo), min(ev.end, hi)
        return ev.raw[s - ev.start : e - ev.start] if s < e else ""
    return ev.raw if lo <= ev.start < hi else ""  # an entity is copied whole or not at all


def _render(sentence: Sentence, translation: str, hints: Sequence[str], entities: dict[str, str]) -> str:
    a, _ = sentence.span
    length = max(1, len(sentence.text))

    def offset(pos: int) -> int:
        """Plain-text offset → offset in the sentence as the model read it (whitespace collapsed)."""
        return len(_SPACES.sub(" ", sentence.plain[a:pos]).lstrip(" "))

    def render(node: Node, lo: int, hi: int) -> str:
        out = []
        cursor = lo
        for i, child in enumerate(node.children):
            rel = (offset(child.start) / length, offset(child.end) / length)
            if child.kind == "point":
                pos = align.snap(translation, rel[0] * len(translation), cursor, hi)
                out.append(_escape(translation[cursor:pos], entities))
                out.append(child.open_raw)
                cursor = pos
                continue
            snippet = collapse(sentence.plain[child.start : child.end])
            hint = hints[child.hint] if child.hint >= 0 else None
            at_start = child.start <= node.start and i == 0
            at_end = child.end >= node.end and i == len(node.children) - 1
            if child.kind == "atom":
                found = align.verbatim(translation, snippet, cursor, hi)
                s, e = found or (align.snap(translation, rel[0] * len(translation), cursor, hi),) * 2
                out.append(_escape(translation[cursor:s], entities))
                out.append(child.open_raw)
                cursor = e
                continue
            s, e = align.place(translation, snippet, hint, rel, cursor, hi, at_start=at_start, at_end=at_end)
            out.append(_escape(translation[cursor:s], entities))
            out.append(child.open_raw)
            out.append(render(child, s, e))
            out.append(child.close_raw)
            cursor = e
        out.append(_escape(translation[cursor:hi], entities))
        return "".join(out)

    return render(sentence.root, 0, len(translation))
