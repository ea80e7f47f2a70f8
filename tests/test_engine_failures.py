"""Failure isolation: a model error (exception, out of memory) in one batch fails or retries only the
sentences it touched; everything else gets its exact result and the engine keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fake_backend import HookedBackend
from ferry.model.cache import DecoderCache
from ferry.model.translator import Translator
from ferry.server.engine import Engine
from ferry.server.requests import DecodeOptions, RequestHandle, TranslationFailedError

WAIT = 60.0
GREEDY = DecodeOptions(beam_size=1)
BEAM4 = DecodeOptions(beam_size=4)
POISON = "red blue green cat dog bird runs sleeps eats big"
"""10 words: longer than every tiny training sentence, so its rows are recognisable by source length."""


def poison_len(t: HookedBackend) -> int:
    return len(t.tokenize([POISON])[0])


def patch_decode_step(t: HookedBackend, fail: Callable[[int, DecoderCache], BaseException | None]) -> list[int]:
    """Make ``decode_step`` raise ``fail(call, cache)`` when it returns an exception; returns the rows seen
    per call."""
    rows: list[int] = []

    def step(tokens: torch.Tensor, cache: DecoderCache) -> None:
        rows.append(cache.num_rows)
        error = fail(len(rows), cache)
        if error is not None:
            raise error

    t.on_step = step
    return rows


@pytest.fixture
def fresh(tiny_checkpoint: Path) -> HookedBackend:
    """A translator behind hooks that make its model calls fail."""
    return HookedBackend(Translator(tiny_checkpoint, device="cpu"))


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> Callable[[str, DecodeOptions], str]:
    t = Translator(tiny_checkpoint, device="cpu")
    return lambda text, o: t.translate_batch([text], beam_size=o.beam_size)[0].text


@pytest.fixture(scope="module")
def sources(tiny_pairs: list[tuple[str, str]]) -> list[str]:
    return [s for s, _ in tiny_pairs]


@contextmanager
def unstarted(engine: Engine) -> Iterator[Engine]:
    """The engine without starting its worker (``with Engine(...)`` starts it at once), stopped after."""
    try:
        yield engine
    finally:
        engine.stop()


def submit_together(engine: Engine, jobs: Sequence[tuple[str, DecodeOptions]]) -> list[RequestHandle]:
    """Queue every job before the worker starts, so they all join the first batch."""
    handles = [engine.submit([text], options) for text, options in jobs]
    engine.start()
    return handles


def test_a_sentence_that_always_fails_fails_alone(
    fresh: HookedBackend, reference: Callable[[str, DecodeOptions], str], sources: list[str]
) -> None:
    bad = poison_len(fresh)
    rows = patch_decode_step(fresh, lambda _, c: RuntimeError("kernel exploded") if bad in c.src_lengths_host else None)
    jobs = [(s, BEAM4 if i % 2 else GREEDY) for i, s in enumerate(sources[:8])]
    jobs.insert(3, (POISON, BEAM4))  # shares the beam-4 lane with four other sentences
    with unstarted(Engine(fresh)) as engine:
        handles = submit_together(engine, jobs)
        for (text, options), h in zip(jobs, handles):
            if text == POISON:
                with pytest.raises(TranslationFailedError, match=r"texts\[0\].*RuntimeError: kernel exploded") as info:
                    h.future.result(WAIT)
                assert info.value.index == 0
            else:
                assert h.future.result(WAIT)[0].text == reference(text, options)
        assert engine.stats().failed_sentences == 1
        # the engine keeps serving
        later = engine.submit([sources[20], sources[21]], BEAM4).future.result(WAIT)
        assert [r.text for r in later] == [reference(s, BEAM4) for s in sources[20:22]]
    assert max(rows) == 5 * 4  # the first beam-4 step held the poison with its four lane mates
    assert 4 in rows  # ... and the poison ended up running alone (4 beam rows) before it failed


def test_a_transient_out_of_memory_is_retried_and_nothing_fails(
    fresh: HookedBackend, reference: Callable[[str, DecodeOptions], str], sources: list[str]
) -> None:
    patch_decode_step(
        fresh, lambda call, _: torch.OutOfMemoryError("CUDA out of memory (simulated)") if call == 3 else None
    )
    jobs = [(s, GREEDY) for s in sources[:10]]
    with unstarted(Engine(fresh)) as engine:
        handles = submit_together(engine, jobs)
        assert [h.future.result(WAIT)[0].text for h in handles] == [reference(s, GREEDY) for s, _ in jobs]
        assert engine.stats().failed_sentences == 0


def test_an_encoder_failure_fails_only_the_newcomer_that_causes_it(
    fresh: HookedBackend, reference: Callable[[str, DecodeOptions], str], sources: list[str]
) -> None:
    bad = fresh.tokenize([POISON])[0]

    def encode(rows: Sequence[Sequence[int]]) -> None:
        if any(list(r) == bad for r in rows):
            raise torch.OutOfMemoryError("out of memory while encoding (simulated)")

    fresh.on_encode = encode
    jobs = [(s, GREEDY) for s in sources[:6]]
    jobs.append((POISON, GREEDY))
    with unstarted(Engine(fresh)) as engine:
        handles = submit_together(engine, jobs)
        for (text, options), h in zip(jobs, handles):
            if text == POISON:
                with pytest.raises(TranslationFailedError, match="OutOfMemoryError"):
                    h.future.result(WAIT)
            else:
                assert h.future.result(WAIT)[0].text == reference(text, options)
        assert engine.submit([sources[30]], GREEDY).future.result(WAIT)[0].text == reference(sources[30], GREEDY)


def test_a_failed_sentence_fails_its_whole_request_but_not_others(
    fresh: HookedBackend, reference: Callable[[str, DecodeOptions], str], sources: list[str]
) -> None:
    bad = poison_len(fresh)
    patch_decode_step(fresh, lambda _, c: RuntimeError("boom") if bad in c.src_lengths_host else None)
    engine = Engine(fresh)
    mixed = engine.submit([sources[0], POISON, sources[1]], GREEDY)
    clean = engine.submit([sources[2], sources[3]], GREEDY)
    with engine:
        with pytest.raises(TranslationFailedError, match=r"texts\[1\]"):
            mixed.future.result(WAIT)
        assert [r.text for r in clean.future.result(WAIT)] == [reference(s, GREEDY) for s in sources[2:4]]
        assert engine.stats().inflight_requests == 0
