"""Sentence splitters on hard cases (abbreviations, decimals, quotes, ellipses; en/de) and speed (docs/text.md).

    nice -n -15 .venv/bin/python bench/text_split.py --out /tmp/text_split.json

Needs pysbd and syntok besides ferry's sentencex (``pip install pysbd syntok``); a missing one is skipped.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"

# (language, sentences joined by " | ")
CASES = [
    ("en", "Dr. Smith arrived at 3.5 p.m. yesterday. | He was late!"),
    ("en", 'She said "Hello there." | Then she left.'),
    ("en", "Wait... what happened? | I have no idea."),
    ("en", "The U.S. economy grew by 2.5% in 2023. | Mr. Jones, e.g. the CEO, agreed."),
    ("en", "Is it true? | Yes! | It is."),
    ("en", "He lives at No. 5 Main St. in Springfield. | It's nice."),
    ("de", "Das ist z. B. ein Test. | Dr. Müller kommt um 3.5 Uhr."),
    ("de", "Äpfel, Birnen usw. sind Obst. | Wir essen sie gern."),
    ("de", "Er sagte: „Ich komme morgen.“ | Dann ging er."),
    ("de", "Am 3. Oktober ist Feiertag. | Das ist gut."),
    ("de", "Das kostet ca. 5 Euro, d. h. nicht viel. | Wirklich?"),
    ("de", "Warte… was ist passiert? | Ich weiß es nicht!"),
    ("de", "Die Firma XY GmbH & Co. KG sitzt in Berlin. | Sie wächst."),
]

Splitter = Callable[[str, str], list[str]]


def splitters() -> dict[str, Splitter]:
    out: dict[str, Splitter] = {}
    import sentencex

    out["sentencex"] = lambda lang, t: [s.strip() for s in sentencex.segment(lang, t) if s.strip()]
    try:
        import pysbd

        out["pysbd"] = lambda lang, t: [
            s.strip() for s in pysbd.Segmenter(language=lang, clean=False).segment(t) if s.strip()
        ]
    except ImportError:
        pass
    try:
        import syntok.segmenter as syntok_segmenter

        def syntok(lang: str, t: str) -> list[str]:
            return [
                t[sent[0].offset : sent[-1].offset + len(sent[-1].value)]
                for para in syntok_segmenter.process(t)
                for sent in para
            ]

        out["syntok"] = syntok
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("text_split.json"))
    args = ap.parse_args()
    paragraphs = {}
    for lang in ("en", "de"):
        with gzip.open(DATA / f"test_2016_flickr.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        paragraphs[lang] = [" ".join(lines[i : i + 5]) for i in range(0, len(lines), 5)]
    rows = []
    for name, split in splitters().items():
        wrong = [text for lang, text in CASES if split(lang, text.replace(" | ", " ")) != text.split(" | ")]
        chars, elapsed = 0, 0.0
        for lang, paras in paragraphs.items():
            t0 = time.perf_counter()
            for p in paras:
                split(lang, p)
            elapsed += time.perf_counter() - t0
            chars += sum(map(len, paras))
        row = {
            "splitter": name,
            "hard_cases_right": f"{len(CASES) - len(wrong)}/{len(CASES)}",
            "wrong": wrong,
            "kchars_per_s": round(chars / elapsed / 1000),
        }
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    print("| splitter | hard cases right | k chars/s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['splitter']} | {row['hard_cases_right']} | {row['kchars_per_s']} |")
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform()}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
