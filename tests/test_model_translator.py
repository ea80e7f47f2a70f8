"""Translator facade: padding invariance, n-best, bad input, checkpoints, the local CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ferry.model import Translator

SENTENCES = ["red cat runs", "a big dog sleeps in the house", "tree", "the small bird eats water green blue"]


@pytest.fixture(scope="module")
def translator(tiny_checkpoint: Path) -> Translator:
    return Translator(tiny_checkpoint, device="cpu")


@pytest.mark.parametrize("beam_size", [1, 4])
def test_padded_batch_equals_each_sentence_alone(translator: Translator, beam_size: int) -> None:
    together = translator.translate_batch(SENTENCES, beam_size=beam_size, return_scores=True)
    for sentence, result in zip(SENTENCES, together):
        alone = translator.translate_batch([sentence], beam_size=beam_size, return_scores=True)[0]
        assert result.text == alone.text
        assert result.score == pytest.approx(alone.score, abs=1e-4)


def test_sub_batches_and_order(translator: Translator, tiny_pairs: list[tuple[str, str]]) -> None:
    sources = [s for s, _ in tiny_pairs[:10]]
    results = translator.translate_batch(sources, beam_size=2, max_batch_size=3)
    assert [r.text for r in results] == [t for _, t in tiny_pairs[:10]]


def test_nbest_is_sorted_and_scored(translator: Translator, tiny_pairs: list[tuple[str, str]]) -> None:
    src, tgt = tiny_pairs[0]
    r = translator.translate_batch([src], beam_size=4, num_hypotheses=3, return_scores=True)[0]
    assert len(r.hypotheses) == 3 and len(r.scores) == 3
    assert r.hypotheses[0] == r.text and r.scores[0] == r.score
    assert r.scores == sorted(r.scores, reverse=True)
    assert r.score is not None and r.score < 0
    assert r.text == tgt
    assert r.output_tokens == len(tgt.split()) and r.input_tokens == len(src.split()) + 1  # words (+ EOS)


def test_empty_inputs(translator: Translator, tiny_pairs: list[tuple[str, str]]) -> None:
    assert translator.translate_batch([]) == []
    out = translator.translate_batch(["", tiny_pairs[1][0], "   "])
    assert [r.text for r in out] == ["", tiny_pairs[1][1], ""]


def test_max_length_caps_output(translator: Translator) -> None:
    r = translator.translate_batch(["a big dog sleeps in the house"], beam_size=1, max_length=2)[0]
    assert r.output_tokens == 2


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("beam_size", 0, "beam_size=0 is out of range; allowed: 1 <= beam_size <= 32"),
        ("beam_size", 33, "beam_size"),
        ("max_length", 0, "max_length=0 is out of range"),
        ("length_penalty", -1.0, "length_penalty"),
        ("num_hypotheses", 5, "num_hypotheses=5 is out of range; allowed: 1 <= num_hypotheses <= 4"),
        ("max_batch_size", 0, "max_batch_size"),
    ],
)
def test_bad_options_name_the_option(translator: Translator, option: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        translator.translate_batch(["red cat"], **{option: value})  # type: ignore[arg-type]


def test_bad_texts_and_load_options(translator: Translator, tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="texts must be a list"):
        translator.translate_batch("red cat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"texts\[1\] is int"):
        translator.translate_batch(["red", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"dtype=.*needs a GPU"):
        Translator(tiny_checkpoint, device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="dtype='float8' is not supported"):
        Translator(tiny_checkpoint, device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="device="):
        Translator(tiny_checkpoint, device="tpu")
    with pytest.raises(FileNotFoundError):
        Translator(tiny_checkpoint / "missing", device="cpu")


def test_checkpoint_round_trip_keeps_every_tensor(translator: Translator, tmp_path: Path) -> None:
    from ferry.model.checkpoint import save_checkpoint

    out = save_checkpoint(tmp_path / "copy", translator.model, translator.info,
                          source_spm=translator.path / "spm.model")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "spm.model"]
    again = Translator(out, device="cpu")
    a, b = translator.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert again.info.model_id == "tiny" and again.info.source_language == "xx"


def test_cli_translate_keeps_order(tiny_checkpoint: Path, tiny_pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    sources = [s for s, _ in tiny_pairs[:6]] + [""]
    expected = [t for _, t in tiny_pairs[:6]] + [""]
    cmd = [sys.executable, "-m", "ferry", "translate", "--model", str(tiny_checkpoint), "--device", "cpu",
           "--batch-size", "4", "--beam-size", "2"]
    out = subprocess.run(cmd, input="\n".join(sources) + "\n", capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected
    src_file, dst_file = tmp_path / "in.txt", tmp_path / "out.txt"
    src_file.write_text("\n".join(sources) + "\n")
    out = subprocess.run([*cmd, "-i", str(src_file), "-o", str(dst_file)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert dst_file.read_text().splitlines() == expected
    bad = subprocess.run([*cmd, "--beam-size", "0"], input="x\n", capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "beam_size=0 is out of range" in bad.stderr


def test_search_steps_the_lean_step_on_cpu_and_graphs_on_cuda(translator: Translator) -> None:
    """CPU searches run the lean step (lean_step); a CUDA translator replays CUDA graphs (graph_step)."""
    from ferry.model.lean_step import LeanDecoder

    assert isinstance(translator.stepper(), LeanDecoder)
    if torch.cuda.is_available():
        import copy

        from ferry.model.graph_step import GraphedDecoder

        model = copy.deepcopy(translator.model).to("cuda").half()
        gpu = Translator.from_parts(model, translator.tokenizer)
        assert isinstance(gpu.stepper(), GraphedDecoder)
