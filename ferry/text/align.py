"""Where an inline element of a source sentence goes in its translation (a text heuristic, no model internals).

Tried in order, inside the room its parent and earlier siblings leave:
1. an element touching its parent's start (end) starts (ends) where the parent does;
2. its text copied verbatim into the translation (names, numbers, identity translation);
3. its own translation (a *hint*, translated in the same batch) matched word by word, allowing inflection
   (shared prefix), the densest cluster of matches wins;
4. its relative position in the source sentence, snapped to word boundaries.
Only the order of siblings is kept; tags never cross, so well-formed input stays well-formed.
"""

from __future__ import annotations

import difflib
import string

PUNCT = frozenset(string.punctuation + "„“”‚‘’«»…–—¿¡·")
STOPWORDS = frozenset(
    "a an the der die das den dem des ein eine einen einem einer eines le la les l un une des du de d "
    "el los las uno una lo il gli i".split()
)
"""Articles: ignored when matching a hint, the translation of a short phrase often adds one."""


def word_spans(text: str, lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
    """Spans of the words in ``text[lo:hi]`` without surrounding punctuation."""
    hi = len(text) if hi is None else hi
    spans = []
    i = lo
    while i < hi:
        while i < hi and text[i].isspace():
            i += 1
        j = i
        while j < hi and not text[j].isspace():
            j += 1
        s, e = i, j
        while s < e and text[s] in PUNCT:
            s += 1
        while e > s and text[e - 1] in PUNCT:
            e -= 1
        if s < e:
            spans.append((s, e))
        i = j
    return spans


def similar(a: str, b: str) -> bool:
    """Same word up to inflection (lower-cased input)."""
    if a == b:
        return True
    if min(len(a), len(b)) < 3:
        return False
    prefix = len(_common_prefix(a, b))
    if prefix >= 3 and prefix >= min(len(a), len(b)) - 2:
        return True
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def snap(text: str, pos: float, lo: int, hi: int) -> int:
    """The word boundary (or ``lo``/``hi``) nearest to ``pos``."""
    candidates = {lo, hi}
    for s, e in word_spans(text, lo, hi):
        candidates.update((s, e))
    return min(sorted(candidates), key=lambda c: abs(c - pos))


def verbatim(text: str, snippet: str, lo: int, hi: int) -> tuple[int, int] | None:
    """``snippet`` copied into ``text[lo:hi]``: exact case first, then ignoring case."""
    if not snippet:
        return None
    for haystack, needle in ((text, snippet), (text.lower(), snippet.lower())):
        i = haystack.find(needle, lo, hi)
        while i >= 0:
            j = i + len(needle)
            if _boundary(text, i) and _boundary(text, j):  # "man" is not the start of "Mann"
                return i, j
            i = haystack.find(needle, i + 1, hi)
    return None


def _boundary(text: str, i: int) -> bool:
    """No word continues across position ``i``."""
    return i <= 0 or i >= len(text) or not (text[i - 1].isalnum() and text[i].isalnum())


def by_hint(text: str, hint: str, lo: int, hi: int) -> tuple[int, int] | None:
    """The window of ``text[lo:hi]`` whose words best match the words of ``hint``."""
    hint_words = [hint[s:e].lower() for s, e in word_spans(hint)]
    content = [w for w in hint_words if w not in STOPWORDS] or hint_words
    if not content:
        return None
    spans = word_spans(text, lo, hi)
    matched = [k for k, (s, e) in enumerate(spans) if any(similar(text[s:e].lower(), w) for w in content)]
    if not matched:
        return None
    clusters: list[list[int]] = [[matched[0]]]
    for k in matched[1:]:
        if k - clusters[-1][-1] <= 2:
            clusters[-1].append(k)
        else:
            clusters.append([k])
    best = max(clusters, key=len)  # first of the largest
    return spans[best[0]][0], spans[best[-1]][1]


def proportional(text: str, rel_start: float, rel_end: float, lo: int, hi: int) -> tuple[int, int]:
    """The same relative position in the translation, on word boundaries, at least one word if there is room."""
    n = len(text)
    a = snap(text, rel_start * n, lo, hi)
    b = snap(text, rel_end * n, a, hi)
    if a == b:
        words = word_spans(text, a, hi) or word_spans(text, lo, hi)
        if words:
            s, e = words[0] if words[0][0] >= a else words[-1]
            a, b = max(min(a, s), lo), e
    return a, b


def place(
    text: str,
    snippet: str,
    hint: str | None,
    rel: tuple[float, float],
    lo: int,
    hi: int,
    *,
    at_start: bool,
    at_end: bool,
) -> tuple[int, int]:
    """Target range ``(start, end)`` within ``[lo, hi]`` of an element (see the module docstring)."""
    if at_start and at_end:
        return lo, hi
    found = verbatim(text, snippet, lo, hi) or (by_hint(text, hint, lo, hi) if hint else None)
    start, end = found or proportional(text, rel[0], rel[1], lo, hi)
    if at_start:
        start = lo
    if at_end:
        end = hi
    if snippet and snippet[-1] in PUNCT and not found:
        # a span ending in punctuation keeps the translation's punctuation that follows it
        while end < hi and text[end] in PUNCT:
            end += 1
    if not at_start:  # tags hug the words, the spaces stay outside
        while start < end and text[start].isspace():
            start += 1
    if not at_end:
        while end > start and text[end - 1].isspace():
            end -= 1
    return start, max(start, end)
