"""Static-shape decode steps (model/graph_step.py): the padded, full-capacity step gives the normal
step's logits (CPU, always run), and on a GPU the CUDA-graph replay and the float16/bfloat16 fast path
give the eager tokens (skipped only when CUDA is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ferry.model import Translator
from ferry.model.fastpath import prepare_for_inference
from ferry.model.graph_step import GraphedDecoder, StaticStep, bucket
from ferry.model.loading import load_model
from ferry.model.search import run_search

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bucket_pads_to_powers_of_two() -> None:
    assert [bucket(n) for n in (1, 8, 9, 33)] == [8, 8, 16, 64]


def _search(t: Translator, stepper: object, sources: list[str], beam: int) -> list[list[int]]:
    ids = t.tokenizer.encode_source(sources)
    searcher = t.new_searcher(beam)
    cache = t.encode_ids(ids, copies=searcher.rows_per_seq)
    limits = [t.output_limit(len(r), None) for r in ids]
    found = run_search(stepper, cache, searcher, list(range(len(ids))), limits)  # type: ignore[arg-type]
    return [found[i][0].tokens for i in range(len(ids))]


@pytest.mark.parametrize("beam", [1, 4])
def test_static_step_gives_the_step_tokens(tiny_checkpoint: Path, tiny_pairs: list, beam: int) -> None:
    t = Translator(load_model(tiny_checkpoint))
    sources = [s for s, _ in tiny_pairs[:11]]  # 11 rows: padded to 16
    with torch.inference_mode():
        assert _search(t, StaticStep(t.model), sources, beam) == _search(t, t.model, sources, beam)


def test_static_step_logits_match(tiny_checkpoint: Path) -> None:
    t = Translator(load_model(tiny_checkpoint))
    with torch.inference_mode():
        a = t.encode_ids([[5, 6, 7, 3], [8, 3]])
        b = t.encode_ids([[5, 6, 7, 3], [8, 3]])
        tokens = torch.tensor([2, 2])
        for _ in range(4):
            want = t.model.decode_step(tokens, a)
            got = StaticStep(t.model).decode_step(tokens, b)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            tokens = want.argmax(-1)


@cuda
@pytest.mark.parametrize("beam", [1, 4])
def test_cuda_graph_replay_gives_eager_tokens(tiny_checkpoint: Path, tiny_pairs: list, beam: int) -> None:
    t = Translator(load_model(tiny_checkpoint, device="cuda"))
    sources = [s for s, _ in tiny_pairs]
    with torch.inference_mode():
        want = _search(t, t.model, sources, beam)
        graphed = GraphedDecoder(t.model)
        assert _search(t, graphed, sources, beam) == want
        assert _search(t, graphed, sources, beam) == want  # replays of captured graphs


@cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_fast_path_on_gpu(tiny_checkpoint: Path, tiny_pairs: list, dtype: str) -> None:
    fp32 = Translator(tiny_checkpoint, device="cuda", dtype="float32")
    half = Translator(tiny_checkpoint, device="cuda", dtype=dtype)
    assert next(half.model.parameters()).dtype == getattr(torch, dtype)
    sources = [s for s, _ in tiny_pairs]
    for beam in (1, 4):
        a = [r.text for r in fp32.translate_batch(sources, beam_size=beam)]
        b = [r.text for r in half.translate_batch(sources, beam_size=beam)]
        assert sum(x == y for x, y in zip(a, b)) >= 0.9 * len(sources)
    with torch.inference_mode():  # graphs in half precision too
        assert _search(half, GraphedDecoder(half.model), sources, 4) == _search(half, half.model, sources, 4)


@cuda
def test_prepare_for_inference_on_cuda_converts_dtype(tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint, device="cuda")
    report = prepare_for_inference(loaded.model, device="cuda", dtype=torch.bfloat16)
    assert report.device == "cuda" and report.dtype == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@cuda
def test_serving_engine_on_cuda_replays_graphs_and_gives_in_process_results(
    tiny_checkpoint: Path, tiny_pairs: list
) -> None:
    """The server's step (``Translator.decode_step``) is the graphed one on a GPU; with sentences
    joining and leaving a running batch each result still equals translating it alone."""
    from ferry.server.engine import Engine, EngineConfig
    from ferry.server.requests import DecodeOptions

    t = Translator(tiny_checkpoint, device="cuda")
    assert isinstance(t.stepper(), GraphedDecoder)
    sources = [s for s, _ in tiny_pairs[:12]]
    jobs = [(s, beam) for s in sources for beam in (1, 4)]
    with Engine(t, EngineConfig(admit_every_steps=1)) as engine:
        handles = [engine.submit([s], DecodeOptions(beam_size=beam)) for s, beam in jobs]
        got = [h.future.result(120)[0].text for h in handles]
    assert got == [t.translate_batch([s], beam_size=beam)[0].text for s, beam in jobs]
