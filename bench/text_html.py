"""Inline tag placement in HTML translation with the default model (docs/text.md).

Compares, on short captions with one inline element each (gold: the German words the element should wrap):
- ``ferry``: what ferry.text does (sentence translated without tags; the element's own text translated
  as a hint and matched in the sentence's translation; verbatim copies; relative position as fallback);
- ``proportional``: only the relative position in the sentence;
- ``placeholders``: the tags left in the model input (the model is expected to copy them).
Prints a table and writes JSON.

    nice -n -15 .venv/bin/python bench/text_html.py --out /tmp/text_html.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from datetime import UTC, datetime
from pathlib import Path

# (HTML sentence, words the inline element should wrap in the German translation)
CASES = [
    ("A man in a <b>red shirt</b> is riding a bike.", "roten Hemd"),
    ("Two dogs play in the <i>snow</i> near a tree.", "Schnee"),
    ('A <a href="/w">woman</a> is reading a book in the park.', "Frau"),
    ("The girl with a <strong>blue hat</strong> is smiling.", "blauen Hut"),
    ("A boy jumps into the <em>water</em>.", "Wasser"),
    ("<b>A child</b> is eating an apple.", "Ein Kind"),
    ('Three people are standing on a <span class="x">street corner</span>.', "Straßenecke"),
    ("A man with a <b>guitar</b> sings for the crowd.", "Gitarre"),
    ("A young woman in a <em>black dress</em> walks down the street.", "schwarzen Kleid"),
    ('An older man sits on a <a href="#">bench</a> and feeds the birds.', "Bank"),
    ("A <i>brown dog</i> runs through the grass.", "brauner Hund"),
    ("Two men are playing <b>soccer</b> on the beach.", "Fußball"),
]
TAG = re.compile(r"<(\w+)[^>]*>(.*?)</\1>")


def wrapped(html: str) -> str | None:
    """The text inside the (single) inline element of ``html``, or None if it is gone."""
    m = TAG.search(html)
    return m.group(2).strip() if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/en-de")
    ap.add_argument("--out", type=Path, default=Path("text_html.json"))
    args = ap.parse_args()
    from ferry.model import Translator

    from ferry.text import TextOptions, align, segment

    translator = Translator(args.model, device="cpu")
    html = TextOptions(format="html", language="en")
    seg = segment([c for c, _ in CASES], html)
    t0 = time.perf_counter()
    outputs = [r.text for r in translator.translate_batch(seg.sentences, beam_size=4)]
    placeholder_outputs = [r.text for r in translator.translate_batch([c for c, _ in CASES], beam_size=4)]
    elapsed = time.perf_counter() - t0
    results = {"ferry": seg.reassemble(outputs)}
    place = align.place

    def proportional_only(text, snippet, hint, rel, lo, hi, *, at_start, at_end):  # type: ignore[no-untyped-def]
        return place(text, "", None, rel, lo, hi, at_start=at_start, at_end=at_end)

    align.place = proportional_only  # type: ignore[assignment]
    try:
        results["proportional"] = seg.reassemble(outputs)
    finally:
        align.place = place
    results["placeholders"] = placeholder_outputs
    rows = []
    for name, outs in results.items():
        right = sum(wrapped(o) == gold for o, (_, gold) in zip(outs, CASES))
        rows.append({"method": name, "right": right, "cases": len(CASES), "outputs": outs})
        print(f"| {name} | {right}/{len(CASES)} |")
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "model": args.model,
        "translate_s": round(elapsed, 1),
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
