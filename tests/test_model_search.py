"""Search outside the model, tested against a fake model with known probabilities."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from ferry.model import Translator
from ferry.model.search import BeamSearcher, GreedySearcher, best_candidates, fill_holes, run_search
from torch import Tensor

EOS, START, PAD = 0, 1, 2
V = 6


class FakeState:
    """Per-row token history; reorder/select_rows move histories like a real cache."""

    def __init__(self, rows: int) -> None:
        self.history: list[list[int]] = [[] for _ in range(rows)]
        self.rows_per_step: list[int] = []

    def reorder(self, indices: Tensor) -> None:
        self.history = [list(self.history[i]) for i in indices.tolist()]

    def select_rows(self, indices: Tensor) -> None:
        self.reorder(indices)


class FakeModel:
    """Next-token log-probs depend only on the history: ``table[tuple(history)]``, default EOS."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]]) -> None:
        self.table = table

    def decode_step(self, tokens: Tensor, state: FakeState) -> Tensor:
        state.rows_per_step.append(tokens.numel())
        out = torch.full((tokens.numel(), V), -math.inf)
        for r, tok in enumerate(tokens.tolist()):
            if tok != START:
                state.history[r].append(tok)
            probs = self.table.get(tuple(state.history[r]), {EOS: 1.0})
            for t, p in probs.items():
                out[r, t] = math.log(p)
        return out


# Greedy takes 3 (0.6) then is stuck with 0.3-ish continuations; beam finds 4 -> 5 (0.4 * 0.9).
TABLE = {
    (): {3: 0.6, 4: 0.4},
    (3,): {3: 0.35, 5: 0.35, EOS: 0.3},
    (3, 3): {EOS: 1.0},
    (3, 5): {EOS: 1.0},
    (4,): {5: 0.9, EOS: 0.1},
    (4, 5): {EOS: 1.0},
}


def search(
    searcher: GreedySearcher | BeamSearcher, table: dict, n: int = 1, max_len: int = 10
) -> tuple[dict, FakeState]:
    state = FakeState(n * searcher.rows_per_seq)
    return run_search(FakeModel(table), state, searcher, list(range(n)), [max_len] * n), state


def kwargs(**extra: object) -> dict:
    return {"eos_id": EOS, "start_id": START, "banned_ids": [PAD, START], "length_penalty": 0.0, **extra}


def test_greedy_takes_the_local_best() -> None:
    found, _ = search(GreedySearcher(**kwargs()), TABLE)
    hyp = found[0][0]
    assert hyp.tokens == [3, 3]  # 0.6, then the first of the 0.35 ties, then EOS
    assert hyp.log_prob == pytest.approx(math.log(0.6) + math.log(0.35))


def test_beam_finds_the_better_sequence_and_ranks_nbest() -> None:
    found, _ = search(BeamSearcher(2, **kwargs(n_best=2)), TABLE)
    best, second = found[0]
    assert best.tokens == [4, 5]
    assert best.log_prob == pytest.approx(math.log(0.4 * 0.9))
    assert second.score <= best.score
    assert second.tokens in ([3, 3], [3, 5], [3])


def test_length_penalty_prefers_longer_outputs() -> None:
    table = {(): {EOS: 0.5, 3: 0.5}, (3,): {4: 0.9, EOS: 0.1}, (3, 4): {5: 0.9, EOS: 0.1}, (3, 4, 5): {EOS: 1.0}}
    short, _ = search(BeamSearcher(3, **kwargs(length_penalty=0.0)), table)
    long, _ = search(BeamSearcher(3, **kwargs(length_penalty=2.0)), table)
    assert short[0][0].tokens == []
    assert long[0][0].tokens == [3, 4, 5]


def test_max_length_truncates_and_banned_tokens_never_appear() -> None:
    table = {(): {PAD: 0.9, 3: 0.1}, (3,): {3: 1.0}, (3, 3): {3: 1.0}, (3, 3, 3): {3: 1.0}}
    for searcher in (GreedySearcher(**kwargs()), BeamSearcher(2, **kwargs())):
        found, _ = search(searcher, table, max_len=3)
        assert found[0][0].tokens == [3, 3, 3]


def test_finished_rows_leave_the_batch() -> None:
    # Sequence 0 ends at once (default EOS); sequence 1 runs on: rows shrink mid-search.
    table = {(): {3: 1.0}, (3,): {3: 1.0}, (3, 3): {EOS: 1.0}}

    class Split(FakeModel):
        def decode_step(self, tokens: Tensor, state: FakeState) -> Tensor:
            out = super().decode_step(tokens, state)
            if len(state.rows_per_step) == 1:
                out[: out.shape[0] // 2] = torch.tensor([0.0] + [-math.inf] * (V - 1))  # first half: EOS now
            return out

    for searcher in (GreedySearcher(**kwargs()), BeamSearcher(2, **kwargs())):
        state = FakeState(2 * searcher.rows_per_seq)
        found = run_search(Split(table), state, searcher, [0, 1], [10, 10])
        assert found[0][0].tokens == [] and found[1][0].tokens == [3, 3]
        k = searcher.rows_per_seq
        assert state.rows_per_step == [2 * k, k, k]


def test_beam_1_equals_greedy_on_a_real_model(tiny_checkpoint: Path, tiny_pairs: list[tuple[str, str]]) -> None:
    t = Translator(tiny_checkpoint, device="cpu")
    from ferry.model.search import make_searcher

    cfg = t.model.cfg
    common = dict(eos_id=cfg.eos_id, start_id=cfg.decoder_start_id, banned_ids=t.banned_ids(), n_best=1)
    rows = t.tokenizer.encode_source([s for s, _ in tiny_pairs[:12]] + ["cat cat cat dog", "water"])
    limits = [t.output_limit(len(r), None) for r in rows]
    ids = list(range(len(rows)))
    with torch.inference_mode():
        greedy = run_search(t.stepper(), t.encode(rows), make_searcher(1, **common), ids, limits)  # type: ignore[arg-type]
        beam1 = run_search(
            t.stepper(),
            t.encode(rows),
            make_searcher(1, greedy_for_beam_1=False, **common),
            ids,
            limits,  # type: ignore[arg-type]
        )
    for i in ids:
        assert beam1[i][0].tokens == greedy[i][0].tokens
        assert beam1[i][0].score == pytest.approx(greedy[i][0].score, abs=1e-5)


@pytest.mark.parametrize("max_len", [1, 2, 10])
def test_beams_forked_after_the_first_step_find_the_same_hypotheses(max_len: int) -> None:
    """``expand_after_first_step``: the first step runs one row per sequence, then every beam gets a
    copy of its row and logits; hypotheses and scores equal the all-beams-from-the-start search."""
    want, full = search(BeamSearcher(3, **kwargs(n_best=3)), TABLE, n=2, max_len=max_len)
    state = FakeState(2)
    got = run_search(
        FakeModel(TABLE),
        state,
        BeamSearcher(3, **kwargs(n_best=3)),
        [0, 1],
        [max_len] * 2,
        expand_after_first_step=True,
    )
    assert got == want
    assert state.rows_per_step[0] == 2 and full.rows_per_step[0] == 6  # one row per sequence, not per beam
    assert state.rows_per_step[1:] == full.rows_per_step[1:]


def test_translator_beam_search_forks_after_the_first_step(tiny_checkpoint: Path, tiny_pairs: list) -> None:
    t = Translator(tiny_checkpoint, device="cpu")
    sources = [s for s, _ in tiny_pairs[:8]]
    rows_seen: list[int] = []
    stepper = t.stepper()
    original = stepper.decode_step

    def spy(tokens: Tensor, cache: object) -> Tensor:
        rows_seen.append(tokens.numel())
        return original(tokens, cache)  # type: ignore[arg-type]

    stepper.decode_step = spy  # type: ignore[method-assign]
    forked = [r.text for r in t.translate_batch(sources, beam_size=4)]
    del stepper.decode_step  # back to the class's method
    assert rows_seen[0] == len(sources) and rows_seen[1] == 4 * len(sources)
    ids = t.tokenizer.encode_source(sources)
    limits = [t.output_limit(len(r), None) for r in ids]
    with torch.inference_mode():  # the reference: all beams from the start
        found = run_search(stepper, t.encode(ids, copies=4), t.new_searcher(4), list(range(len(ids))), limits)
    assert forked == [t.make_result(found[i], len(ids[i]), False).text for i in range(len(ids))]


@pytest.mark.parametrize(("n", "k", "vocab"), [(3, 4, 50), (2, 4, 6), (1, 1, 5), (5, 3, 2), (4, 2, 1000)])
def test_best_candidates_equal_one_top_k_over_every_beam(n: int, k: int, vocab: int) -> None:
    gen = torch.Generator().manual_seed(n * 100 + k * 10 + vocab)
    logp = torch.log_softmax(torch.randn(n * k, vocab, generator=gen), dim=-1)  # (N*K, V)
    logp[:, 0] = -math.inf  # a banned token
    sums = torch.randn(n * k, generator=gen)
    sums[k - 1] = -math.inf  # a dead beam
    want_scores, want_idx = (sums[:, None] + logp).view(n, k * vocab).topk(min(2 * k, k * vocab), dim=1)
    row_scores, row_tokens = logp.topk(min(2 * k, vocab), dim=1)  # (N*K, P) each
    scores, idx = best_candidates(row_scores, row_tokens, sums, n, k, vocab)
    assert torch.equal(scores, want_scores)
    finite = want_scores > -math.inf  # the order of -inf candidates is arbitrary
    assert torch.equal(idx[finite], want_idx[finite])


@pytest.mark.parametrize(
    ("keep", "order"),
    [([0, 2, 3, 5], [0, 5, 2, 3]), ([1, 2], [2, 1]), ([0, 1, 2], [0, 1, 2]), ([3], [3]), ([], []), ([0, 4], [0, 4])],
)
def test_rows_leaving_greedy_search_are_filled_from_the_end(keep: list[int], order: list[int]) -> None:
    got = fill_holes(keep)
    assert got == order and sorted(got) == keep
    assert all(got[i] == i for i in range(len(got)) if i in keep)  # survivors in place never move


def test_greedy_moves_only_the_rows_that_fill_holes() -> None:
    searcher = GreedySearcher(**kwargs())
    for seq in range(4):
        searcher.add(seq, max_length=10)
    logits = torch.zeros(4, V)
    logits[:, 3] = 1.0
    logits[1, EOS] = 5.0  # sequence 1 ends now
    out = searcher.step(logits)
    assert out.rows is not None and out.rows.tolist() == [0, 3, 2]  # the last row takes the hole
    assert [s.seq_id for s in searcher.seqs] == [0, 3, 2]
    assert [seq_id for seq_id, _ in out.finished] == [1]
