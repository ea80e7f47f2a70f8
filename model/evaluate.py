"""sacreBLEU scoring (BLEU and chrF, with signatures) of a translator on a test set."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import read_lines, read_parallel
from .translator import Translator


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    sentences: int
    seconds: float

    def report(self) -> str:
        return (
            f"BLEU = {self.bleu:.2f}  ({self.bleu_signature})\n"
            f"chrF = {self.chrf:.2f}  ({self.chrf_signature})\n"
            f"{self.sentences} sentences in {self.seconds:.1f} s"
        )


def score(hypotheses: Sequence[str], references: Sequence[str], *more_references: Sequence[str]) -> Scores:
    """Corpus BLEU (13a tokenizer, cased) and chrF of detokenised text; several reference streams
    (each line-aligned with the hypotheses) make it a multi-reference score."""
    from sacrebleu.metrics import BLEU, CHRF

    streams = [list(references), *(list(r) for r in more_references)]
    for stream in streams:
        if len(hypotheses) != len(stream):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(stream)} references")
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(list(hypotheses), streams)
    c = chrf.corpus_score(list(hypotheses), streams)
    return Scores(b.score, c.score, str(bleu.get_signature()), str(chrf.get_signature()), len(hypotheses), 0.0)


def evaluate(
    translator: Translator,
    source_file: str | Path,
    reference_file: str | Path | Sequence[str | Path],
    *,
    beam_size: int = 4,
    batch_size: int = 64,
    limit: int | None = None,
    output_file: str | Path | None = None,
) -> Scores:
    """Translate ``source_file`` and score it against one reference file or several (multi-reference)."""
    ref_files = [reference_file] if isinstance(reference_file, str | Path) else list(reference_file)
    sources = read_lines(source_file)
    ref_streams = [read_parallel(source_file, f)[1] for f in ref_files]
    if limit is not None:
        sources, ref_streams = sources[:limit], [r[:limit] for r in ref_streams]
    start = time.perf_counter()
    results = translator.translate_batch(sources, beam_size=beam_size, max_batch_size=batch_size)
    hyps = [r.text for r in results]
    elapsed = time.perf_counter() - start
    if output_file is not None:
        Path(output_file).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    s = score(hyps, *ref_streams)
    s.seconds = elapsed
    return s
