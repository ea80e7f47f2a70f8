from pathlib import Path

from ferry.model import Translator


def test_tiny_model_reproduces_its_training_pairs(tiny_checkpoint: Path, tiny_pairs: list[tuple[str, str]]) -> None:
    t = Translator(tiny_checkpoint, device="cpu")
    sources = [s for s, _ in tiny_pairs]
    expected = [t for _, t in tiny_pairs]
    assert [r.text for r in t.translate_batch(sources, beam_size=1)] == expected
    assert [r.text for r in t.translate_batch(sources, beam_size=4)] == expected
