"""ferry.text.detect: offline language detection, best first, confidences 0–1."""

from __future__ import annotations

import pytest

from ferry.text.detect import Detector, detect


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("A man in a red shirt is riding a bike.", "en"),
        ("Where is the train station?", "en"),
        ("Ein Mann in einem roten Hemd fährt Fahrrad.", "de"),
        ("Wo ist der Bahnhof?", "de"),
        ("Un homme en chemise rouge fait du vélo.", "fr"),
        ("Où est la gare ?", "fr"),
        ("Muž v červeném tričku jede na kole.", "cs"),
    ],
)
def test_detects_short_sentences(text: str, language: str) -> None:
    (result,) = detect([text])
    assert result[0][0] == language
    confidences = [c for _, c in result]
    assert confidences == sorted(confidences, reverse=True)
    assert all(0 < c <= 1 for c in confidences) and sum(confidences) <= 1.0001


def test_text_without_letters_has_no_language() -> None:
    assert detect(["", "123 456", "?!"]) == [[], [], []]


def test_top_limits_the_candidates() -> None:
    (result,) = detect(["Hallo Welt, wie geht es dir?"], top=1)
    assert len(result) == 1 and result[0][0] == "de"


def test_restricted_language_set() -> None:
    d = Detector(["en", "de"])
    (result,) = d.detect(["Un homme en chemise rouge fait du vélo."])
    assert {lang for lang, _ in result} <= {"en", "de"}


def test_unknown_language_code_is_rejected() -> None:
    with pytest.raises(ValueError, match="'xx' is not known to the detector"):
        Detector(["en", "xx"])
