"""Build the training mix for the default models from Multi30k and Tatoeba (en-de).

Writes plain text files into OUT (outside the repository):
- ``train.en`` / ``train.de``: Multi30k train + Tatoeba minus the dev split (all its translations kept);
- ``valid.en`` / ``valid.de``: 400 Multi30k val pairs + 400 Tatoeba dev pairs (one reference each), for
  the per-epoch BLEU that picks the best checkpoint;
- ``tatoeba_dev.en`` and ``tatoeba_dev.de.refN``: the held-out Tatoeba English sentences (and, for de-en,
  ``tatoeba_dev.de`` / ``tatoeba_dev.en.refN`` grouped by German sentence), every translation a reference.

The dev split is by English sentence (compared case- and final-punctuation-insensitively), so no
translation of a held-out sentence is trained on. Usage:

    python scripts/prepare_default_data.py ../shared/data ../runs/data
"""

from __future__ import annotations

import gzip
import random
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

DEV_SENTENCES = 1000
SEED = 7


def key(s: str) -> str:
    return s.lower().rstrip(" .!?").strip()


def clean(s: str) -> str:
    """NFC, straight spaces, no stray whitespace (Tatoeba has a few non-breaking spaces)."""
    s = unicodedata.normalize("NFC", s).replace("\u00a0", " ").replace("\u202f", " ")
    return " ".join(s.split())


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def write(path: Path, rows: list[str]) -> None:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def write_refs(out: Path, stem: str, src_lang: str, tgt_lang: str, groups: dict[str, list[str]]) -> None:
    """Multi-reference files: the source once, then refN with the N-th translation (or the first again)."""
    srcs = sorted(groups)
    n_refs = max(len(v) for v in groups.values())
    write(out / f"{stem}.{src_lang}", srcs)
    for i in range(n_refs):
        write(out / f"{stem}.{tgt_lang}.ref{i}", [groups[s][i] if i < len(groups[s]) else groups[s][0] for s in srcs])


def main(data: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    m_en, m_de = (list(map(clean, lines(data / f"multi30k/train.{lang}.gz"))) for lang in ("en", "de"))
    v_en, v_de = (list(map(clean, lines(data / f"multi30k/val.{lang}.gz"))) for lang in ("en", "de"))
    pairs = [tuple(line.split("\t")) for line in lines(data / "tatoeba-en-de/train.tsv.gz") if "\t" in line]
    pairs = [(clean(e), clean(d)) for e, d in pairs if e.strip() and d.strip()]

    english = sorted({key(e) for e, _ in pairs})
    rng = random.Random(SEED)
    dev_keys = set(rng.sample(english, DEV_SENTENCES))
    dev = [(e, d) for e, d in pairs if key(e) in dev_keys]
    dev_german = {key(d) for _, d in dev}
    # Hold out German sentences of the dev pairs too, so the de-en dev set is unseen as well.
    train = [(e, d) for e, d in pairs if key(e) not in dev_keys and key(d) not in dev_german]

    write(out / "train.en", m_en + [e for e, _ in train])
    write(out / "train.de", m_de + [d for _, d in train])
    dev_shuffled = dev[:]
    rng.shuffle(dev_shuffled)
    write(out / "valid.en", v_en[:400] + [e for e, _ in dev_shuffled[:400]])
    write(out / "valid.de", v_de[:400] + [d for _, d in dev_shuffled[:400]])

    en_groups: dict[str, list[str]] = defaultdict(list)
    de_groups: dict[str, list[str]] = defaultdict(list)
    for e, d in dev:
        if d not in en_groups[e]:
            en_groups[e].append(d)
        if e not in de_groups[d]:
            de_groups[d].append(e)
    write_refs(out, "tatoeba_dev", "en", "de", en_groups)
    write_refs(out, "tatoeba_dev", "de", "en", de_groups)
    print(
        f"train: {len(m_en)} Multi30k + {len(train)} Tatoeba pairs; "
        f"Tatoeba dev: {len(en_groups)} English / {len(de_groups)} German sentences ({len(dev)} pairs); "
        f"dropped {len(pairs) - len(train) - len(dev)} pairs sharing a German dev sentence"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
