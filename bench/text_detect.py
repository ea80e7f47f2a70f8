"""Language detectors on short sentences: accuracy and speed (docs/text.md).

Compares lingua and py3langid, each restricted to ferry's language set (ferry.text.detect.DEFAULT_LANGUAGES)
and with all their languages, on
Multi30k test2016 (en/de/fr/cs, 1000 image captions each) and Tatoeba en-de (1000 short sentences a
side, 1-7 words). Prints a table and writes JSON.

    nice -n -15 .venv/bin/python bench/text_detect.py --out /tmp/text_detect.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LANGS = ("en", "de", "fr", "cs")


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def datasets(n: int) -> dict[str, list[tuple[str, str]]]:
    """Name → (text, language) pairs."""
    sets: dict[str, list[tuple[str, str]]] = {}
    for lang in LANGS:
        sets[f"multi30k-{lang}"] = [(t, lang) for t in _lines(DATA / "multi30k" / f"test_2016_flickr.{lang}.gz")[:n]]
    pairs = [line.split("\t") for line in _lines(DATA / "tatoeba-en-de" / "train.tsv.gz")]
    rng = random.Random(0)
    sample = rng.sample(pairs, n)
    sets["tatoeba-en"] = [(en, "en") for en, _ in sample]
    sets["tatoeba-de"] = [(de, "de") for _, de in sample]
    return sets


def detectors() -> dict[str, Callable[[], Callable[[str], str]]]:
    """Name → factory of a text → ISO 639-1 code function (factories so load time is measured)."""

    def lingua_restricted() -> Callable[[str], str]:
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        from ferry.text.detect import DEFAULT_LANGUAGES

        codes = [getattr(IsoCode639_1, "NB" if c == "no" else c.upper()) for c in DEFAULT_LANGUAGES]
        d = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()

        def f(t: str) -> str:
            lang = d.detect_language_of(t)
            code = lang.iso_code_639_1.name.lower() if lang else "?"
            return "no" if code == "nb" else code

        return f

    def lingua_all() -> Callable[[str], str]:
        from lingua import LanguageDetectorBuilder

        d = LanguageDetectorBuilder.from_all_languages().build()

        def f(t: str) -> str:
            lang = d.detect_language_of(t)
            return lang.iso_code_639_1.name.lower() if lang else "?"

        return f

    def py3langid_all() -> Callable[[str], str]:
        import py3langid

        return lambda t: str(py3langid.classify(t)[0])

    def py3langid_restricted() -> Callable[[str], str]:
        from ferry.text.detect import Detector

        d = Detector()
        return lambda t: (d.detect([t], top=1)[0] or [("?", 0.0)])[0][0]

    return {
        "lingua (ferry set)": lingua_restricted,
        "lingua (all 75)": lingua_all,
        "py3langid (ferry set) = ferry.text.detect": py3langid_restricted,
        "py3langid (all 97)": py3langid_all,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="sentences per data set")
    ap.add_argument("--out", type=Path, default=Path("text_detect.json"))
    args = ap.parse_args()
    sets = datasets(args.n)
    rows = []
    for name, factory in detectors().items():
        t0 = time.perf_counter()
        fn = factory()
        fn("warm up")
        load_s = time.perf_counter() - t0
        row: dict[str, object] = {"detector": name, "load_s": round(load_s, 2)}
        total, correct, elapsed = 0, 0, 0.0
        for set_name, items in sets.items():
            t0 = time.perf_counter()
            ok = sum(fn(text) == lang for text, lang in items)
            elapsed += time.perf_counter() - t0
            row[set_name] = round(100 * ok / len(items), 1)
            total += len(items)
            correct += ok
        row["all"] = round(100 * correct / total, 1)
        row["sent_per_s"] = round(total / elapsed)
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ["detector", *sets, "all", "sent_per_s", "load_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(), "n": args.n}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
