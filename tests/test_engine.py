"""The continuous-batching engine: results equal the in-process Translator's, validation, backpressure,
drain/stop, continuous joining, cancellation and deadlines. Failure isolation: test_engine_failures.py.

Tests that need the worker to be at a known point use ``Gate``: it wraps ``decode_step`` and holds the
worker inside a chosen step until the test releases it, so nothing depends on timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_backend import HookedBackend
from ferry.model.cache import DecoderCache
from ferry.model.translator import TranslationResult, Translator
from ferry.server.engine import Engine, EngineConfig, RequestHandle, StepEvent
from ferry.server.requests import (
    DeadlineExceededError,
    DecodeOptions,
    EngineClosedError,
    InputTooLongError,
    QueueFullError,
)

WAIT = 60.0  # generous: the CI machine has 2 shared cores
GREEDY = DecodeOptions(beam_size=1)
BEAM4 = DecodeOptions(beam_size=4)
MIXED = [
    GREEDY,
    BEAM4,
    DecodeOptions(beam_size=2, length_penalty=0.6, num_hypotheses=2, return_scores=True),
    DecodeOptions(beam_size=3, max_length=3, return_scores=True),
]


# ---------------------------------------------------------------------------------------------- helpers
class Gate:
    """Hooks ``backend.decode_step``: the ``at``-th call blocks until ``release()``."""

    def __init__(self, backend: HookedBackend, at: int) -> None:
        self.at = at
        self.calls = 0
        self.reached = threading.Event()
        self.opened = threading.Event()
        backend.on_step = self

    def __call__(self, tokens: torch.Tensor, cache: Any) -> None:
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            assert self.opened.wait(WAIT), "test never released the gate"

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT), "the engine never reached the gated step"

    def release(self) -> None:
        self.opened.set()


class Reference:
    """``Translator.translate_batch([sentence], ...)`` for one sentence alone, memoized."""

    def __init__(self, translator: Translator) -> None:
        self.translator = translator
        self._memo: dict[tuple[str, DecodeOptions], TranslationResult] = {}
        self._lock = threading.Lock()

    def __call__(self, text: str, options: DecodeOptions) -> TranslationResult:
        with self._lock:
            key = (text, options)
            if key not in self._memo:
                self._memo[key] = self.translator.translate([text], options)[0]
            return self._memo[key]


def assert_same(got: TranslationResult, want: TranslationResult) -> None:
    assert got.text == want.text
    assert got.hypotheses == want.hypotheses
    assert (got.input_tokens, got.output_tokens) == (want.input_tokens, want.output_tokens)
    assert (got.score is None) == (want.score is None)
    if want.score is not None:
        assert got.score == pytest.approx(want.score, abs=1e-4)
        assert got.scores == pytest.approx(want.scores, abs=1e-4)


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` in ``n`` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(WAIT)
            target(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def translator(tiny_checkpoint: Path) -> Translator:
    return Translator(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> Reference:
    return Reference(Translator(tiny_checkpoint, device="cpu"))


@pytest.fixture(scope="module")
def engine(translator: Translator) -> Any:
    """A shared running engine for tests that do not patch the model."""
    with Engine(translator) as e:
        yield e


@pytest.fixture
def fresh(tiny_checkpoint: Path) -> HookedBackend:
    """A backend of its own (a translator behind hooks), for tests that intercept model calls."""
    return HookedBackend(Translator(tiny_checkpoint, device="cpu"))


@pytest.fixture(scope="module")
def sources(tiny_pairs: list[tuple[str, str]]) -> list[str]:
    return [s for s, _ in tiny_pairs]


def by_words(sources: list[str]) -> tuple[str, str]:
    """(a longest source, a shortest source)."""
    ordered = sorted(sources, key=lambda s: len(s.split()))
    return ordered[-1], ordered[0]


# ---------------------------------------------------------------------------------------------- results
@pytest.mark.parametrize("options", [GREEDY, BEAM4], ids=["greedy", "beam4"])
def test_32_concurrent_single_sentence_clients_get_the_translator_result(
    engine: Engine, reference: Reference, sources: list[str], options: DecodeOptions
) -> None:
    got: dict[int, TranslationResult] = {}

    def client(i: int) -> None:
        got[i] = engine.submit([sources[i]], options).future.result(WAIT)[0]

    run_threads(32, client)
    for i in range(32):
        assert_same(got[i], reference(sources[i], options))


def test_mixed_lengths_and_options_in_flight_at_once(engine: Engine, reference: Reference, sources: list[str]) -> None:
    got: dict[int, list[TranslationResult]] = {}
    texts = {i: [sources[i], sources[-1 - i]] if i % 3 == 0 else [sources[i]] for i in range(24)}

    def client(i: int) -> None:
        got[i] = engine.submit(texts[i], MIXED[i % len(MIXED)]).future.result(WAIT)

    run_threads(24, client)
    for i in range(24):
        options = MIXED[i % len(MIXED)]
        assert len(got[i]) == len(texts[i])
        for text, result in zip(texts[i], got[i]):
            assert_same(result, reference(text, options))


def test_one_request_with_many_texts_keeps_input_order(
    engine: Engine, translator: Translator, sources: list[str]
) -> None:
    texts = [sources[5], "", sources[0], "   ", sources[17], sources[5]]
    got = engine.submit(texts, BEAM4).future.result(WAIT)
    want = translator.translate_batch(texts, beam_size=4)
    assert [r.text for r in got] == [r.text for r in want]
    assert got[1].text == "" and got[3].text == ""


def test_tight_budgets_still_give_exact_results_and_never_starve(
    fresh: HookedBackend, reference: Reference, sources: list[str]
) -> None:
    rows: list[int] = []
    config = EngineConfig(max_batch_rows=4, max_batch_tokens=20)  # smaller than any beam-4 sentence
    with Engine(fresh, config) as engine:
        engine.on_step = lambda e: rows.append(e.rows)
        handles = [engine.submit([s], BEAM4) for s in sources[:6]]
        results = [h.future.result(WAIT)[0] for h in handles]
    for s, r in zip(sources, results):
        assert_same(r, reference(s, BEAM4))
    assert rows and max(rows) <= 4  # one beam-4 sentence at a time: the budget was respected


# ---------------------------------------------------------------------------------------------- inputs
def test_empty_strings_translate_to_empty_without_model_work(translator: Translator) -> None:
    engine = Engine(translator)  # never started: nothing could run on the model
    result = engine.submit(["", "  \t"], DecodeOptions(return_scores=True)).future.result(0)
    assert [r.text for r in result] == ["", ""]
    assert result[0].score == 0.0 and result[0].output_tokens == 0
    assert engine.submit([], GREEDY).future.result(0) == []
    assert engine.stats().queue_sentences == 0


@pytest.mark.parametrize(
    ("options", "name"),
    [
        (DecodeOptions(beam_size=0), "beam_size"),
        (DecodeOptions(beam_size=1000), "beam_size"),
        (DecodeOptions(beam_size=2, num_hypotheses=3), "num_hypotheses"),
        (DecodeOptions(length_penalty=-1.0), "length_penalty"),
        (DecodeOptions(max_length=0), "max_length"),
        (DecodeOptions(max_length=10_000), "max_length"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(
    translator: Translator, options: DecodeOptions, name: str
) -> None:
    engine = Engine(translator)
    with pytest.raises(ValueError, match=rf"{name}=.*allowed: .*{name}"):
        engine.submit(["red cat"], options)


def test_bad_texts_raise_value_error(translator: Translator) -> None:
    engine = Engine(translator)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        engine.submit(["red cat", 7], GREEDY)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="single string"):
        engine.submit("red cat", GREEDY)


def test_too_long_input_names_index_tokens_and_limit(translator: Translator) -> None:
    engine = Engine(translator, EngineConfig(max_input_tokens=5))
    assert engine.count_tokens(["red cat", "red blue green cat dog bird"]) == [3, 7]
    with pytest.raises(InputTooLongError) as info:
        engine.submit(["red cat", "red blue green cat dog bird"], GREEDY)
    err = info.value
    assert (err.index, err.tokens, err.limit) == (1, 7, 5)
    assert isinstance(err, ValueError)
    assert "texts[1]" in str(err) and "5" in str(err)
    assert engine.stats().queue_sentences == 0  # nothing of the request was queued
    with pytest.raises(ValueError, match="max_positions"):
        Engine(translator, EngineConfig(max_input_tokens=10_000))


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_batch_rows"):
        EngineConfig(max_batch_rows=0)


# ---------------------------------------------------------------------------------------------- backpressure, lifecycle
def test_full_queue_raises_queue_full_at_once(fresh: HookedBackend, reference: Reference, sources: list[str]) -> None:
    engine = Engine(fresh, EngineConfig(max_queue_sentences=4))  # not started yet: nothing drains
    accepted = [engine.submit([sources[0], sources[1], sources[2]], GREEDY)]
    with pytest.raises(QueueFullError, match="max_queue_sentences"):
        engine.submit([sources[3], sources[4]], GREEDY)
    with pytest.raises(QueueFullError, match="at most 4"):
        engine.submit(sources[:5], GREEDY)
    accepted.append(engine.submit([sources[3], ""], GREEDY))  # blank texts take no queue room
    assert engine.stats().queue_sentences == 4
    with engine:
        for h, texts in zip(accepted, [sources[:3], [sources[3]]]):
            for text, result in zip(texts, h.future.result(WAIT)):
                assert_same(result, reference(text, GREEDY))
        # room again once the queue drained into the batch
        assert engine.submit([sources[5]], GREEDY).future.result(WAIT)[0].text == reference(sources[5], GREEDY).text


def test_drain_refuses_new_work_and_finishes_in_flight(
    fresh: HookedBackend, reference: Reference, sources: list[str]
) -> None:
    long, short = by_words(sources)
    gate = Gate(fresh, at=2)
    with Engine(fresh) as engine:
        running = engine.submit([long], BEAM4)
        gate.wait_reached()  # `running` is mid-decode
        queued = engine.submit([short], GREEDY)  # accepted, still waiting in the queue
        drained: list[bool] = []
        drainer = threading.Thread(target=lambda: drained.append(engine.drain(WAIT)))
        drainer.start()
        while not engine.stats().draining:
            time.sleep(0.001)
        with pytest.raises(EngineClosedError, match="shutting down"):
            engine.submit([short], GREEDY)
        assert not drained  # still waiting for the accepted requests
        gate.release()
        drainer.join(WAIT)
        assert drained == [True]
        assert_same(running.future.result(0)[0], reference(long, BEAM4))
        assert_same(queued.future.result(0)[0], reference(short, GREEDY))
        assert engine.stats().inflight_requests == 0


def test_stop_fails_what_is_left_with_engine_closed(fresh: HookedBackend, sources: list[str]) -> None:
    long, _ = by_words(sources)
    gate = Gate(fresh, at=2)
    engine = Engine(fresh)
    engine.start()
    running = engine.submit([long], GREEDY)
    gate.wait_reached()
    queued = engine.submit([sources[1]], GREEDY)
    assert engine.drain(0.01) is False  # cannot finish while the worker is held
    stopper = threading.Thread(target=engine.stop)
    stopper.start()
    while not engine._stopping.is_set():
        time.sleep(0.001)
    gate.release()  # the held step completes, then the worker stops
    stopper.join(WAIT)
    assert not engine.running
    for h in (running, queued):
        with pytest.raises(EngineClosedError):
            h.future.result(0)
    with pytest.raises(EngineClosedError):
        engine.submit([sources[0]], GREEDY)


# ---------------------------------------------------------------------------------------------- continuous batching
def test_newcomer_joins_the_running_batch_and_short_finishes_first(
    fresh: HookedBackend, reference: Reference, sources: list[str]
) -> None:
    long, short = by_words(sources)
    assert len(reference(long, GREEDY).text.split()) >= len(reference(short, GREEDY).text.split()) + 3
    gate = Gate(fresh, at=2)
    events: list[StepEvent] = []
    finished: list[str] = []
    with Engine(fresh, EngineConfig(admit_every_steps=1)) as engine:  # join at the very next step
        engine.on_step = events.append
        first = engine.submit([long], GREEDY)
        gate.wait_reached()  # `first` is in the middle of its second decode step
        second = engine.submit([short], GREEDY)
        first.future.add_done_callback(lambda _: finished.append("long"))
        second.future.add_done_callback(lambda _: finished.append("short"))
        gate.release()
        assert_same(first.future.result(WAIT)[0], reference(long, GREEDY))
        assert_same(second.future.result(WAIT)[0], reference(short, GREEDY))
    both = {first.id, second.id}
    shared = [e for e in events if both <= e.request_ids]
    assert shared, "no step ran rows of both requests"
    assert all(e.rows == 2 and e.lanes == 1 for e in shared)  # one batch, one row each
    assert finished == ["short", "long"]  # submitted later, left the batch earlier


def test_cancel_drops_rows_at_the_next_step(fresh: HookedBackend, reference: Reference, sources: list[str]) -> None:
    long, _ = by_words(sources)
    other = sources[3]
    gate = Gate(fresh, at=2)
    events: list[StepEvent] = []
    with Engine(fresh) as engine:
        engine.on_step = events.append
        victim = engine.submit([long], BEAM4)
        survivor = engine.submit([other], BEAM4)
        gate.wait_reached()  # held inside step 2
        victim.cancel()
        gate.release()
        assert_same(survivor.future.result(WAIT)[0], reference(other, BEAM4))
        with pytest.raises(CancelledError):
            victim.future.result(0)
        assert engine.stats().inflight_requests == 0
    later = [e for e in events if e.step > 2]
    assert later and all(victim.id not in e.request_ids for e in later)
    assert all(e.rows == 4 for e in later)  # only the survivor's beam rows are left


def test_cancel_while_queued_frees_the_queue(fresh: HookedBackend, sources: list[str]) -> None:
    engine = Engine(fresh, EngineConfig(max_queue_sentences=2))
    handle = engine.submit(sources[:2], GREEDY)
    with pytest.raises(QueueFullError):
        engine.submit([sources[2]], GREEDY)
    handle.cancel()
    assert engine.stats().queue_sentences == 0
    assert engine.stats().inflight_requests == 0
    engine.submit([sources[2]], GREEDY)  # room again


def test_deadline_passing_mid_decode_drops_the_request(
    fresh: HookedBackend, reference: Reference, sources: list[str]
) -> None:
    long, _ = by_words(sources)
    other = sources[7]
    gate = Gate(fresh, at=2)
    events: list[StepEvent] = []
    with Engine(fresh) as engine:
        engine.on_step = events.append
        expiring = engine.submit([long], GREEDY, deadline=time.monotonic() + 0.05)
        survivor = engine.submit([other], GREEDY)
        gate.wait_reached()
        late = engine.submit([sources[9]], GREEDY, deadline=time.monotonic() + 0.05)  # queued behind the held step
        time.sleep(0.1)  # both deadlines pass while the worker is held
        gate.release()
        assert_same(survivor.future.result(WAIT)[0], reference(other, GREEDY))
        with pytest.raises(DeadlineExceededError, match="deadline exceeded"):
            expiring.future.result(WAIT)
        with pytest.raises(DeadlineExceededError):
            late.future.result(WAIT)
    assert all(expiring.id not in e.request_ids for e in events if e.step > 2)
    assert all(late.id not in e.request_ids for e in events)  # expired in the queue: never ran


def test_deadline_already_passed_fails_at_once(translator: Translator) -> None:
    engine = Engine(translator)
    handle = engine.submit(["red cat"], GREEDY, deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceededError):
        handle.future.result(0)
    assert engine.stats().queue_sentences == 0


def test_stats_and_step_hook_report_the_batch(fresh: HookedBackend, sources: list[str]) -> None:
    events: list[StepEvent] = []
    with Engine(fresh) as engine:
        engine.on_step = events.append
        engine.submit(sources[:8], BEAM4).future.result(WAIT)
        stats = engine.stats()
    assert stats.step_count == len(events) > 0
    assert stats.generated_tokens == sum(e.rows for e in events)
    assert stats.output_tokens > 0
    assert stats.active_rows == stats.active_sequences == stats.queue_sentences == 0
    assert max(e.rows for e in events) == 32  # 8 sentences x 4 beams
    assert all(e.tokens > e.rows for e in events)


def test_a_failing_step_hook_does_not_stop_the_engine(
    fresh: HookedBackend, reference: Reference, sources: list[str]
) -> None:
    def hook(event: StepEvent) -> None:
        raise RuntimeError("metrics backend down")

    with Engine(fresh) as engine:
        engine.on_step = hook
        assert engine.submit([sources[4]], GREEDY).future.result(WAIT)[0].text == reference(sources[4], GREEDY).text


def _newcomers_join_together(
    fresh: HookedBackend, reference: Reference, long: str, newcomers: list[str], every: int
) -> bool:
    """Run ``long``; one newcomer arrives during each of decode steps 2, 3 and 4. Whether the first
    step that ran any newcomer ran all of them."""
    engine = Engine(fresh, EngineConfig(admit_batch=8, admit_every_steps=every))
    events: list[StepEvent] = []
    engine.on_step = events.append
    handles: list[RequestHandle] = []
    calls = [0]

    def step(tokens: torch.Tensor, cache: DecoderCache) -> None:
        calls[0] += 1
        if 2 <= calls[0] <= 4:
            handles.append(engine.submit([newcomers[calls[0] - 2]], GREEDY))

    fresh.on_step = step
    with engine:
        first = engine.submit([long], GREEDY)
        assert_same(first.future.result(WAIT)[0], reference(long, GREEDY))
        for h, s in zip(handles, newcomers):
            assert_same(h.future.result(WAIT)[0], reference(s, GREEDY))
    ids = {h.id for h in handles}
    first_seen = next(e for e in events if ids & e.request_ids)
    return ids <= first_seen.request_ids


def test_newcomers_arriving_apart_join_together(fresh: HookedBackend, reference: Reference, sources: list[str]) -> None:
    """While a batch runs, arrivals at different steps are gathered into one join (one encoder batch);
    with ``admit_every_steps=1`` each joins at the step after it arrived."""
    long, _ = by_words(sources)
    newcomers = [s for s in sources[:8] if s != long][:3]
    assert _newcomers_join_together(fresh, reference, long, newcomers, every=3)
    assert not _newcomers_join_together(fresh, reference, long, newcomers, every=1)
