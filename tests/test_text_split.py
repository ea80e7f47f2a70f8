"""ferry.text plain text: sentence splitting hard cases and layout round trips."""

from __future__ import annotations

import pytest

from ferry.text import Segmented, TextOptions, segment
from ferry.text.split import sentence_spans


def sentences(text: str, language: str | None = None) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text, language)]


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "Dr. Smith arrived at 3.5 p.m. yesterday. | He was late!"),
        ("en", 'She said "Hello there." | Then she left.'),
        ("en", "Wait... what happened? | I have no idea."),
        ("en", "Is it true? | Yes! | It is."),
        ("en", "The U.S. economy grew by 2.5% in 2023. | Mr. Jones agreed."),
        ("de", "Das ist z. B. ein Test. | Dr. Müller kommt um 3.5 Uhr."),
        ("de", "Äpfel, Birnen usw. sind Obst. | Wir essen sie gern."),
        ("de", "Er sagte: „Ich komme morgen.“ | Dann ging er."),
        ("de", "Am 3. Oktober ist Feiertag. | Das ist gut."),
        ("de", "Warte… was ist passiert? | Ich weiß es nicht!"),
    ],
)
def test_hard_cases(language: str, expected: str) -> None:
    """``expected`` is the text with `` | `` between its sentences."""
    assert sentences(expected.replace(" | ", " "), language) == expected.split(" | ")


def test_options_carry_the_language() -> None:
    seg = segment(["Das ist z. B. ein Test. Gut."], TextOptions(language="de"))
    assert seg.sentences == ["Das ist z. B. ein Test.", "Gut."]


LAYOUTS = [
    "Hello there. How are you?",
    "  Leading and trailing space.  ",
    "First line.\nSecond line! Third sentence?\n\n\nAfter blank lines.\n",
    "Windows\r\nline endings. Two.\r\n",
    "\tTabs\tinside. And  double  spaces.  Next.\t",
    "",
    "   ",
    "\n\n",
    "no final punctuation",
    "Ellipsis… and more... Then a new sentence.",
]


@pytest.mark.parametrize("text", LAYOUTS)
@pytest.mark.parametrize("split", [True, False])
def test_identity_translation_gives_the_input_back(text: str, split: bool) -> None:
    seg = segment([text], TextOptions(split_sentences=split))
    assert seg.reassemble(seg.sentences) == [text]
    assert all(s and s == s.strip() for s in seg.sentences)  # nothing empty, no surrounding space sent


def test_layout_kept_around_translations() -> None:
    text = "  One. Two!\n\nThree?  "
    seg = segment([text])
    assert seg.sentences == ["One.", "Two!", "Three?"]
    assert seg.reassemble(["Eins.", "Zwei!", "Drei?"]) == ["  Eins. Zwei!\n\nDrei?  "]


def test_blank_texts_send_nothing_and_come_back_unchanged() -> None:
    seg = segment(["", "  ", "Yes. No.", "\n"])
    assert seg.sentences == ["Yes.", "No."]
    assert seg.counts == [0, 0, 2, 0]
    assert seg.reassemble(["x", "y"]) == ["", "  ", "x y", "\n"]


def test_no_split_sends_the_whole_text_once() -> None:
    seg = segment([" One. Two. "], TextOptions(split_sentences=False))
    assert seg.sentences == ["One. Two."]
    assert seg.reassemble(["Eins. Zwei."]) == [" Eins. Zwei. "]


def test_sentences_of_all_texts_are_flattened_in_order() -> None:
    seg = segment(["One. Two.", "Three.", "Four. Five. Six."])
    assert seg.sentences == ["One.", "Two.", "Three.", "Four.", "Five.", "Six."]
    assert seg.counts == [2, 1, 3]
    assert seg.reassemble(["1", "2", "3", "4", "5", "6"]) == ["1 2", "3", "4 5 6"]


def test_wrong_number_of_translations_is_an_error() -> None:
    seg = segment(["One. Two."])
    with pytest.raises(ValueError, match="expected 2 translations, got 1"):
        seg.reassemble(["x"])


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="format='pdf'"):
        TextOptions(format="pdf")  # type: ignore[arg-type]


def test_plain_segmented_still_joins_by_default() -> None:
    assert Segmented(sentences=["a", "b"], counts=[2]).reassemble(["x", "y"]) == ["x y"]
