"""Score a model for its model card: Multi30k test2016/test2017 and the Tatoeba dev split (multi-reference),
beam 4, sacreBLEU 13a cased detokenised; then ten everyday sentences and their translations.

    python scripts/score_default_model.py models/en-de --data ../shared/data --dev ../runs/data [--json out.json]

``--dev`` is the folder written by scripts/prepare_default_data.py (the held-out Tatoeba split).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ferry.model.evaluate import evaluate
from ferry.model.translator import load_translator

EVERYDAY = {
    "en": [
        "Bees make honey.",
        "He loves trains.",
        "Where is the train station?",
        "I don't understand.",
        "Can you help me, please?",
        "The weather is nice today.",
        "My sister lives in Berlin.",
        "We are going to the cinema tonight.",
        "How much does this cost?",
        "Thank you very much!",
    ],
    "de": [
        "Bienen machen Honig.",
        "Er liebt Züge.",
        "Wo ist der Bahnhof?",
        "Ich verstehe nicht.",
        "Können Sie mir bitte helfen?",
        "Das Wetter ist heute schön.",
        "Meine Schwester wohnt in Berlin.",
        "Wir gehen heute Abend ins Kino.",
        "Wie viel kostet das?",
        "Vielen Dank!",
    ],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--dev", default="../runs/data")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--json", help="write the figures here as JSON")
    args = p.parse_args()

    meta = json.loads((Path(args.model) / "config.json").read_text())
    src, tgt = meta["source_language"], meta["target_language"]
    translator = load_translator(args.model, device="cpu")
    m30k = Path(args.data) / "multi30k"
    dev = Path(args.dev)
    sets = {
        "Multi30k test2016": (m30k / f"test_2016_flickr.{src}.gz", [m30k / f"test_2016_flickr.{tgt}.gz"]),
        "Multi30k test2017": (m30k / f"test_2017_flickr.{src}.gz", [m30k / f"test_2017_flickr.{tgt}.gz"]),
        "Tatoeba dev (multi-ref)": (dev / f"tatoeba_dev.{src}", sorted(dev.glob(f"tatoeba_dev.{tgt}.ref*"))),
    }
    results = {}
    print("| set | BLEU | chrF | refs | sentences |\n| --- | ---: | ---: | ---: | ---: |")
    for name, (source, refs) in sets.items():
        s = evaluate(translator, source, refs, beam_size=args.beam_size)
        results[name] = {
            "bleu": round(s.bleu, 2),
            "chrf": round(s.chrf, 2),
            "refs": len(refs),
            "sentences": s.sentences,
        }
        print(f"| {name} | {s.bleu:.2f} | {s.chrf:.2f} | {len(refs)} | {s.sentences} |", flush=True)
    print(f"\nSignatures: {s.bleu_signature} / {s.chrf_signature}\n")
    sentences = EVERYDAY[src]
    outputs = [r.text for r in translator.translate_batch(sentences, beam_size=args.beam_size)]
    print(f"| {src} | {tgt} (ferry, beam {args.beam_size}) |\n| --- | --- |")
    for a, b in zip(sentences, outputs):
        print(f"| {a} | {b} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"scores": results, "examples": dict(zip(sentences, outputs))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
