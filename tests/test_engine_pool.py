"""``EnginePool``: several engines over one model. Requests go to the least busy engine, every
engine's results equal the in-process Translator's, statistics add up, lifecycle reaches every
engine, and GPU models refuse more than one. ``ServerConfig`` picks engines and threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_backend import HookedBackend
from ferry.model.options import DecodeOptions, EngineClosedError, TranslationRequest
from ferry.model.translator import Translator
from ferry.server.config import MAX_AUTO_ENGINES, ServerConfig, usable_cores
from ferry.server.engine import Engine, StepEvent
from ferry.server.pool import EnginePool
from ferry.server.registry import ModelRegistry

WAIT = 60.0
GREEDY = DecodeOptions(beam_size=1)
BEAM2 = DecodeOptions(beam_size=2, num_hypotheses=2, return_scores=True)


@pytest.fixture(scope="module")
def translator(tiny_checkpoint: Path) -> Translator:
    return Translator(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def sources(tiny_pairs: list[tuple[str, str]]) -> list[str]:
    return [s for s, _ in tiny_pairs]


def test_requests_spread_over_the_engines_and_match_translate(translator: Translator, sources: list[str]) -> None:
    pool = EnginePool(translator, engines=2)
    # Not started: what each engine holds stays queued, so the routing is visible.
    handles = [pool.submit([text], BEAM2 if i % 2 else GREEDY) for i, text in enumerate(sources[:8])]
    assert [e.stats().queue_sentences for e in pool.engines] == [4, 4]
    assert pool.stats().queue_sentences == 8
    big = pool.submit(sources[8:14], GREEDY)  # six sentences: all to one engine, the next request elsewhere
    after_big = pool.submit([sources[14]], GREEDY)
    queued = [e.stats().queue_sentences for e in pool.engines]
    assert sorted(queued) == [5, 10]
    threads: set[str] = set()
    events: list[StepEvent] = []

    def hook(event: StepEvent) -> None:
        threads.add(threading.current_thread().name)
        events.append(event)

    pool.on_step = hook
    with pool:
        results = [h.result(WAIT) for h in handles]
        big_results, last = big.result(WAIT), after_big.result(WAIT)
        assert not pool.stats().draining
    for i, (text, got) in enumerate(zip(sources[:8], results)):
        want = translator.translate([text], BEAM2 if i % 2 else GREEDY)[0]
        assert (got[0].text, got[0].hypotheses) == (want.text, want.hypotheses)
        if want.score is not None:
            assert got[0].score == pytest.approx(want.score, abs=1e-4)
    assert [r.text for r in big_results] == [r.text for r in translator.translate(sources[8:14], GREEDY)]
    assert last[0].text == translator.translate([sources[14]], GREEDY)[0].text
    assert all(e.stats().step_count > 0 for e in pool.engines)  # both decoded
    assert len(threads) == 2 and len(events) == pool.stats().step_count
    total = pool.stats()
    assert total.output_tokens == sum(e.stats().output_tokens for e in pool.engines) > 0
    assert total.inflight_requests == 0 and total.draining  # stopped


def test_the_least_busy_engine_gets_the_request(translator: Translator) -> None:
    pool = EnginePool(translator, engines=3)
    pool.engines[0].submit(["red cat"] * 3, GREEDY)
    pool.engines[1].submit(["red cat"], GREEDY)
    pool.submit(["blue dog"], GREEDY)
    assert [e.stats().queue_sentences for e in pool.engines] == [3, 1, 1]
    pool.submit(["blue dog"], GREEDY)  # engines 1 and 2 tie: the first of them
    assert [e.stats().queue_sentences for e in pool.engines] == [3, 2, 1]
    pool.stop()


def test_drain_and_stop_reach_every_engine(translator: Translator, sources: list[str]) -> None:
    pool = EnginePool(translator, engines=2)
    pool.start()
    assert pool.running
    handles = [pool.submit([text], GREEDY) for text in sources[:6]]
    assert pool.drain(WAIT)
    assert all(h.future.done() and not h.future.exception() for h in handles)
    assert pool.stats().draining
    with pytest.raises(EngineClosedError):
        pool.submit(["red cat"], GREEDY)
    with pytest.raises(EngineClosedError):
        pool.engines[1].submit(["red cat"], GREEDY)
    pool.stop()
    assert not pool.running and not any(e.running for e in pool.engines)


def test_stop_fails_what_every_engine_still_holds(translator: Translator) -> None:
    pool = EnginePool(translator, engines=2)
    handles = [pool.submit(["red cat"], GREEDY) for _ in range(4)]  # never started
    pool.stop()
    for h in handles:
        with pytest.raises(EngineClosedError):
            h.result(WAIT)


def test_busy_engines_share_the_threads(translator: Translator) -> None:
    pool = EnginePool(translator, engines=2, threads=4)
    hooks = [e.step_threads for e in pool.engines]
    assert all(h is not None for h in hooks)
    assert [h() for h in hooks if h] == [4, 4]  # idle: whoever works next has them all
    pool.engines[1].submit(["red cat"], GREEDY)
    assert [h() for h in hooks if h] == [4, 4]  # one busy engine: all four
    pool.engines[0].submit(["red cat"], GREEDY)
    assert [h() for h in hooks if h] == [2, 2]
    assert EnginePool(translator, engines=2).engines[0].step_threads is None  # threads=0: left alone
    assert EnginePool(translator, engines=1, threads=4).engines[0].step_threads is None
    pool.stop()


def test_each_worker_sets_its_own_threads(translator: Translator) -> None:
    """torch's intra-op thread count is per thread: a worker switching leaves the caller's as it was."""
    before = torch.get_num_threads()
    seen: list[int] = []
    backend = HookedBackend(translator)
    backend.on_step = lambda tokens, cache: seen.append(torch.get_num_threads())
    pool = EnginePool(backend, engines=2, threads=before + 1)
    with pool:
        pool.submit(["red cat"], GREEDY).result(WAIT)
    assert seen and set(seen) == {before + 1}
    assert torch.get_num_threads() == before


class _OnGpu(HookedBackend):
    @property
    def device(self) -> torch.device:
        return torch.device("cuda")


@pytest.mark.parametrize("engines", [0, -1, True, 1.5])
def test_bad_engine_counts_are_refused(translator: Translator, engines: Any) -> None:
    with pytest.raises(ValueError, match=r"^engines=.* is invalid; it must be an integer >= 1"):
        EnginePool(translator, engines=engines)


def test_a_gpu_model_keeps_one_engine(translator: Translator) -> None:
    with pytest.raises(ValueError, match=r"engines=2 needs a CPU model; on cuda one engine owns the device"):
        EnginePool(_OnGpu(translator), engines=2)
    assert len(EnginePool(_OnGpu(translator), engines=1).engines) == 1


def test_registry_load_builds_pools(tiny_checkpoint: Path, translator: Translator) -> None:
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu", engines=2)
    served = next(iter(registry))
    assert isinstance(served.engine, EnginePool) and len(served.engine.engines) == 2
    assert served.max_input_tokens == served.engine.engines[0].max_input_tokens
    assert isinstance(next(iter(ModelRegistry.load([tiny_checkpoint], device="cpu"))).engine, Engine)
    registry.start()
    try:
        handles = [
            registry.submit(TranslationRequest(("red cat",), GREEDY, model_id=served.model_id))[1] for _ in range(4)
        ]
        texts = [h.result(WAIT)[0].text for h in handles]
    finally:
        registry.stop()
    assert texts == [translator.translate_batch(["red cat"], beam_size=1)[0].text] * 4


def test_server_config_picks_engines_and_threads() -> None:
    auto = ServerConfig()
    assert auto.engine_count(2, gpu=False) == 2
    assert auto.engine_count(64, gpu=False) == MAX_AUTO_ENGINES
    assert auto.engine_count(16, gpu=True) == 1
    assert ServerConfig(engines=3).engine_count(2, gpu=False) == 3
    assert auto.intra_op_threads(2) == 2
    assert auto.intra_op_threads(16, "3") == 3
    assert auto.intra_op_threads(16, "4,2") == 4
    assert auto.intra_op_threads(16, "junk") == auto.intra_op_threads(16, "0") == 16
    assert ServerConfig(threads=5).intra_op_threads(16, "3") == 5
    for bad in ({"engines": -1}, {"threads": -2}, {"engines": True}):
        with pytest.raises(ValueError, match="is out of range; allowed: integers >= 0"):
            ServerConfig(**bad)


def test_usable_cores_follow_a_cgroup_cpu_quota(tmp_path: Path) -> None:
    mask = usable_cores(tmp_path / "absent")
    assert mask >= 1
    quota = tmp_path / "cpu.max"
    for text, want in (("max 100000\n", mask), ("150000 100000\n", min(mask, 2)), ("50000 100000", 1), ("junk", mask)):
        quota.write_text(text)
        assert usable_cores(quota) == want, text


def test_two_engines_on_a_shipped_model_equal_translate() -> None:
    """The shipped models are pre-norm, so on CPU both engines decode through the fused native step
    (model/step.c) of one shared decoder at the same time: every result equals the in-process one.
    Regression: that step once kept its arguments in one structure shared by the engine threads."""
    from ferry import default_model_dir

    translator = Translator(default_model_dir("en", "de"), device="cpu")
    stepper = translator.stepper()
    if getattr(stepper, "fused", None) is None:
        pytest.skip("no fused native step here (no C compiler)")
    texts = [
        "A man is riding a bicycle.",
        "Two dogs are playing in the snow.",
        "A woman in a red coat is sitting on a bench in the park.",
        "Children are playing football on a green field near the river.",
        "Where is the train station?",
        "He loves trains.",
    ] * 4
    pool = EnginePool(translator, engines=2)
    with pool:
        handles = [pool.submit([text], BEAM2 if i % 3 else GREEDY) for i, text in enumerate(texts)]
        results = [h.result(WAIT) for h in handles]
    assert all(e.stats().step_count > 0 for e in pool.engines)  # both decoded, concurrently
    for i, (text, got) in enumerate(zip(texts, results)):
        want = translator.translate([text], BEAM2 if i % 3 else GREEDY)[0]
        assert got[0].text == want.text
        assert got[0].hypotheses == want.hypotheses
