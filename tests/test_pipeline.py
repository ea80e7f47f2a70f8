"""The text stage around decoding (``ferry.model.pipeline``): texts → sentences → one result per text."""

from __future__ import annotations

from ferry.model.options import DecodeOptions, TranslationResult
from ferry.model.pipeline import merge_results, split_texts

from ferry.text import TextOptions


def fake(sentence: str, score: float) -> TranslationResult:
    return TranslationResult(
        text=sentence.upper(),
        score=score,
        hypotheses=[sentence.upper(), sentence],
        scores=[score, score - 1],
        input_tokens=2,
        output_tokens=3,
    )


def test_sentences_of_all_texts_are_flattened_and_merged_back_per_text() -> None:
    options = DecodeOptions(return_scores=True, num_hypotheses=2)
    plan = split_texts(["One. Two.", "   ", "Three"], options)
    assert plan.owners == [0] * (len(plan.sentences) - 1) + [2]
    results = merge_results(plan, [fake(s, -1.0) for s in plan.sentences])
    assert [r.text for r in results][1:] == ["", "THREE"]
    first = results[0]
    assert first.text.upper() == first.text and "ONE." in first.text and "TWO." in first.text
    n = len(plan.sentences) - 1
    assert (first.score, first.input_tokens, first.output_tokens) == (-1.0 * n, 2 * n, 3 * n)
    assert first.scores == [-1.0 * n, -2.0 * n] and len(first.hypotheses) == 2
    assert results[1].score == 0.0 and results[1].hypotheses == []


def test_one_sentence_text_keeps_its_result_unchanged() -> None:
    options = DecodeOptions(text=TextOptions(split_sentences=False))
    plan = split_texts(["One. Two."], options)
    assert plan.sentences == ["One. Two."]
    result = TranslationResult(text="EINS. ZWEI.", hypotheses=["EINS. ZWEI."], input_tokens=5, output_tokens=6)
    assert merge_results(plan, [result]) == [result]
