"""ferry.text HTML: structure kept, untouched regions byte-identical, inline tags placed, no crash."""

from __future__ import annotations

import collections
from html.parser import HTMLParser

import pytest

from ferry.text import TextOptions, segment

HTML = TextOptions(format="html")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>A small page.</title>
<style>p { color: red; } /* Do not. Touch. */</style>
<script>if (a < b && c) { say("Hello. World."); }</script></head>
<body>
  <!-- a comment. It stays. -->
  <h1 class="title">Dogs and cats</h1>
  <p>A man in a <b>red shirt</b> is riding a bike. Two dogs play in the <i>snow</i>.</p>
  <p>Fish &amp; chips&nbsp;today. <a href="/x?a=1&amp;b=2" title="Keep. Me.">Click here</a> now!</p>
  <pre>  keep   this
     exactly. </pre>
  <p>Run <code>ls -l</code> to list files.</p>
  <div translate="no"><p>Brand name. Not translated.</p></div>
  <p class="x notranslate">Also <b>untouched</b>.</p>
  <ul><li>First item.</li><li>Second <em>item</em>.</li></ul>
  <p>Line one<br>line two. <img src="a.png" alt="An image."> The end.</p>
</body>
</html>
"""


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: collections.Counter[str] = collections.Counter()
        self.stack: list[str] = []
        self.well_formed = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[self.get_starttag_text() or tag] += 1
        if tag not in ("meta", "br", "img"):
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.tags["/" + tag] += 1
        if not self.stack or self.stack.pop() != tag:
            self.well_formed = False


def tags(html: str) -> TagCollector:
    c = TagCollector()
    c.feed(html)
    c.close()
    return c


def upper(sentences: list[str]) -> list[str]:
    return [s.upper() for s in sentences]


def translate(html: str, fn=upper) -> str:  # type: ignore[no-untyped-def]
    seg = segment([html], HTML)
    return seg.reassemble(fn(seg.sentences))[0]


def test_identity_translation_gives_the_page_back() -> None:
    seg = segment([PAGE], HTML)
    assert seg.reassemble(seg.sentences) == [PAGE]


def test_sentences_are_the_text_nodes_only() -> None:
    sentences = segment([PAGE], HTML).sentences
    assert "A small page." in sentences
    assert "A man in a red shirt is riding a bike." in sentences
    assert "Two dogs play in the snow." in sentences
    assert "Fish & chips\xa0today." in sentences
    assert "Line one" in sentences and "line two." in sentences
    joined = " ".join(sentences)
    for untouched in ("Hello. World.", "Do not.", "keep", "Brand name", "untouched", "ls -l", "a comment", "Keep. Me."):
        assert untouched not in joined or untouched == "ls -l"


def test_tags_kept_and_untouched_regions_byte_identical() -> None:
    out = translate(PAGE)
    before, after = tags(PAGE), tags(out)
    assert after.tags == before.tags
    assert after.well_formed and before.well_formed
    for region in (
        "<style>p { color: red; } /* Do not. Touch. */</style>",
        '<script>if (a < b && c) { say("Hello. World."); }</script>',
        "<pre>  keep   this\n     exactly. </pre>",
        "<code>ls -l</code>",
        '<div translate="no"><p>Brand name. Not translated.</p></div>',
        '<p class="x notranslate">Also <b>untouched</b>.</p>',
        "<!-- a comment. It stays. -->",
        "<!DOCTYPE html>",
        '<a href="/x?a=1&amp;b=2" title="Keep. Me.">',
    ):
        assert region in out
    assert "FISH &amp; CHIPS&nbsp;TODAY." in out  # entities written as in the source
    assert "<title>A SMALL PAGE.</title>" in out


def test_inline_tags_stay_around_their_words() -> None:
    out = translate("<p>A man in a <b>red shirt</b> is riding a bike.</p>")
    assert out == "<p>A MAN IN A <b>RED SHIRT</b> IS RIDING A BIKE.</p>"


def test_inline_tags_follow_a_hint_translation() -> None:
    table = {
        "A man in a red shirt is riding a bike.": "Ein Mann in einem roten Hemd fährt Fahrrad.",
        "red shirt": "Ein rotes Hemd.",
    }
    out = translate("<p>A man in a <b>red shirt</b> is riding a bike.</p>", lambda ss: [table[s] for s in ss])
    assert out == "<p>Ein Mann in einem <b>roten Hemd</b> fährt Fahrrad.</p>"


def test_inline_element_without_a_match_still_kept_in_its_sentence() -> None:
    out = translate(
        "<p>Go <b>there</b> now.</p>", lambda ss: ["Geh jetzt los." if s.startswith("Go") else "dort" for s in ss]
    )
    assert tags(out).tags == tags("<p>Go <b>there</b> now.</p>").tags
    assert out.startswith("<p>Geh") and out.endswith("los.</p>")


def test_inline_element_across_sentences() -> None:
    src = "<p><b>One. Two.</b> Three.</p>"
    seg = segment([src], HTML)
    assert seg.sentences[:3] == ["One.", "Two.", "Three."]
    out = seg.reassemble(["Eins.", "Zwei.", "Drei.", *seg.sentences[3:]])[0]
    assert out == "<p><b>Eins. Zwei.</b> Drei.</p>"


def test_no_split_translates_each_block_whole() -> None:
    seg = segment(["<p>One. Two.</p><p>Three.</p>"], TextOptions(format="html", split_sentences=False))
    assert seg.sentences == ["One. Two.", "Three."]


def test_whitespace_inside_a_block_is_collapsed_for_the_model() -> None:
    src = "<p>\n  A long\n  sentence.\n</p>"
    seg = segment([src], HTML)
    assert seg.sentences == ["A long sentence."]
    assert seg.reassemble(["Ein langer Satz."]) == ["<p>\n  Ein langer Satz.\n</p>"]


def test_translation_text_is_escaped() -> None:
    assert translate("<p>Cats.</p>", lambda ss: ["<Katzen> & Hunde"]) == "<p>&lt;Katzen&gt; &amp; Hunde</p>"


def test_several_documents_batch_together() -> None:
    seg = segment(["<p>One.</p>", "plain? <b>no</b>", ""], HTML)
    assert seg.counts[2] == 0
    out = seg.reassemble([s.upper() for s in seg.sentences])
    assert out == ["<p>ONE.</p>", "PLAIN? <b>NO</b>", ""]


@pytest.mark.parametrize(
    "src",
    [
        "<p>unclosed <b>bold <i>italic</b> text</p></div>",
        "<<<>>> & &amp &#xZZ; </p>",
        "<p class='a>broken attr",
        "<!-- unterminated comment",
        "<script>never closed. Text.",
        "</b>stray end. <b>open at end",
        "<p><b>x</p></b>",
        "<![CDATA[ x ]]> text. <?php echo 1; ?>",
        "<div><span>a<div>b</span>c</div>",
        "",
        "<>",
        "&",
    ],
)
def test_malformed_input_does_not_crash(src: str) -> None:
    seg = segment([src], HTML)
    out = seg.reassemble(seg.sentences)[0]
    assert isinstance(out, str)
    out2 = seg.reassemble([s.upper() for s in seg.sentences])[0]
    assert tags(out2).tags == tags(out).tags


def test_a_sentence_of_untouched_code_only_is_not_translated() -> None:
    src = "<p>The girl is smiling. <code>x = 1</code></p>"
    seg = segment([src], HTML)
    assert seg.sentences == ["The girl is smiling."]
    assert seg.reassemble(["Das Mädchen lächelt."]) == ["<p>Das Mädchen lächelt. <code>x = 1</code></p>"]


def test_random_markup_soup_never_crashes_and_keeps_its_tags() -> None:
    import random

    pieces = [
        "<p>", "</p>", "<b>", "</b>", "<i>", "</i>", "<a href='x'>", "</a>", "<br>", "<img src=x>", "<!-- c -->",
        "<code>", "</code>", "<script>", "</script>", "&amp;", "&nbsp;", "&#38;", "&bogus;", "<", ">", "&", " ",
        "\n", "Hello there.", "Dr. Who?", "word", "x.", "<span class=notranslate>", "</span>", "<div translate=no>",
        "</div>", "<pre>", "</pre>", "<!DOCTYPE html>", "<![CDATA[x]]>", "<?pi?>", "</", "<p", "'", '"',
    ]  # fmt: skip
    rng = random.Random(0)
    for _ in range(500):
        src = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        seg = segment([src], HTML)
        same = seg.reassemble(seg.sentences)[0]
        upper = seg.reassemble([s.upper() for s in seg.sentences])[0]
        assert tags(upper).tags == tags(same).tags, src


def test_verbatim_match_respects_word_boundaries() -> None:
    table = {"A man runs.": "Ein Mann rennt.", "man": "Mann"}
    assert translate("<p>A <b>man</b> runs.</p>", lambda ss: [table[s] for s in ss]) == "<p>Ein <b>Mann</b> rennt.</p>"


def test_inline_element_without_letters_is_kept_whole() -> None:
    seg = segment(["<p>Dogs play in the snow<sup>1</sup>.</p>"], HTML)
    assert seg.sentences == ["Dogs play in the snow1."]  # no hint asked for the footnote mark
    assert seg.reassemble(["Hunde spielen im Schnee."]) == ["<p>Hunde spielen im Schnee<sup>1</sup>.</p>"]
