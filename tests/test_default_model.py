"""The shipped default model (models/en-de) translates real sentences out of the box."""

from __future__ import annotations

import pytest
import torch
from ferry.model import Translator

from ferry import default_model_dir

CHECKS = [
    ("A man is riding a bicycle.", ["Mann", "Fahrrad"]),
    ("Two dogs are playing in the snow.", ["Hunde", "Schnee"]),
    ("A woman is sitting on a bench.", ["Frau", "Bank"]),
    ("A little girl is eating an apple.", ["Mädchen"]),
]


@pytest.fixture(scope="module")
def translator() -> Translator:
    return Translator(default_model_dir(), device="cpu")


def test_shipped_model_is_small_and_complete() -> None:
    root = default_model_dir()
    assert sorted(p.name for p in root.iterdir()) == ["README.md", "config.json", "model.safetensors", "spm.model"]
    size = sum(p.stat().st_size for p in root.iterdir())
    assert size <= 25 * 1024 * 1024, f"{size / 2**20:.1f} MiB"


@pytest.mark.parametrize(("source", "words"), CHECKS)
def test_translates_into_german(translator: Translator, source: str, words: list[str]) -> None:
    text = translator.translate_batch([source], beam_size=4)[0].text
    for word in words:
        assert word in text, f"{source!r} -> {text!r} lacks {word!r}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_tokens_on_cpu_and_gpu_in_float32(translator: Translator) -> None:
    gpu = Translator(default_model_dir(), device="cuda", dtype="float32")
    sources = [s for s, _ in CHECKS]
    assert [r.text for r in gpu.translate_batch(sources)] == [r.text for r in translator.translate_batch(sources)]
