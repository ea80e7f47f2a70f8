"""The shipped default models (models/en-de, models/de-en) translate real sentences out of the box:
image captions (Multi30k) and everyday sentences (Tatoeba) in both directions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ferry.model import Translator
from safetensors import safe_open

from ferry import default_model_dir

PAIRS = [("en", "de"), ("de", "en")]

CHECKS = {
    ("en", "de"): [
        ("A man is riding a bicycle.", ["Mann", "Fahrrad"]),
        ("Two dogs are playing in the snow.", ["Hunde", "Schnee"]),
        ("A woman is sitting on a bench.", ["Frau", "Bank"]),
        ("Where is the train station?", ["Wo ist der Bahnhof?"]),
        ("Can you help me, please?", ["mir helfen"]),
        ("He loves trains.", ["Er liebt"]),
    ],
    ("de", "en"): [
        ("Ein Mann fährt Fahrrad.", ["man", "bike|bicycle"]),
        ("Zwei Hunde spielen im Schnee.", ["Two dogs", "snow"]),
        ("Eine Frau sitzt auf einer Bank.", ["woman", "bench"]),
        ("Ich verstehe nicht.", ["I don't understand"]),
        ("Können Sie mir bitte helfen?", ["help me"]),
        ("Er liebt Züge.", ["He loves trains"]),
    ],
}


@pytest.fixture(scope="module", params=PAIRS, ids=lambda p: "-".join(p))
def pair_translator(request: pytest.FixtureRequest) -> tuple[tuple[str, str], Translator]:
    src, tgt = request.param
    return request.param, Translator(default_model_dir(src, tgt), device="cpu")


@pytest.mark.parametrize(("src", "tgt"), PAIRS)
def test_shipped_model_is_small_and_complete(src: str, tgt: str) -> None:
    root = default_model_dir(src, tgt)
    assert root.name == f"{src}-{tgt}"
    assert sorted(p.name for p in root.iterdir()) == ["README.md", "config.json", "model.safetensors", "spm.model"]
    meta = json.loads((root / "config.json").read_text())
    assert (meta["source_language"], meta["target_language"]) == (src, tgt)
    assert meta["weights_dtype"] == "float16"
    weights = root / "model.safetensors"
    assert weights.stat().st_size <= 60 * 1024 * 1024, f"{weights.stat().st_size / 2**20:.1f} MiB"
    with safe_open(str(weights), framework="pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert params <= 25_000_000, params
    card = (root / "README.md").read_text()
    for needed in ("Tatoeba", "CC BY 2.0 FR", "Multi30k", "test2016", "ferry train"):
        assert needed in card, f"model card of {root.name} lacks {needed!r}"


def test_translates_captions_and_everyday_sentences(pair_translator: tuple[tuple[str, str], Translator]) -> None:
    pair, translator = pair_translator
    sources = [s for s, _ in CHECKS[pair]]
    texts = [r.text for r in translator.translate_batch(sources, beam_size=4)]
    for (source, words), text in zip(CHECKS[pair], texts):
        for word in words:  # "a|b": either is right
            assert any(w in text for w in word.split("|")), f"{'-'.join(pair)}: {source!r} -> {text!r} lacks {word!r}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_tokens_on_cpu_and_gpu_in_float32(pair_translator: tuple[tuple[str, str], Translator]) -> None:
    pair, translator = pair_translator
    gpu = Translator(default_model_dir(*pair), device="cuda", dtype="float32")
    sources = [s for s, _ in CHECKS[pair]]
    assert [r.text for r in gpu.translate_batch(sources)] == [r.text for r in translator.translate_batch(sources)]
