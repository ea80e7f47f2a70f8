"""Admission policy (``Scheduler.schedule``): budgets, purging and fairness across requests, decided
without a model and without timing."""

from __future__ import annotations

from ferry.server.queue import RequestQueue
from ferry.server.requests import DecodeOptions, Request, Sentence
from ferry.server.scheduler import Budget, Scheduler

BEAM4 = DecodeOptions(beam_size=4)


def request(n: int, tokens: int = 20, options: DecodeOptions = BEAM4, deadline: float | None = None) -> list[Sentence]:
    r = Request(n, options, deadline)
    r.remaining = n
    return [Sentence(r, i, list(range(tokens)), limit=2 * tokens + 10) for i in range(n)]


def test_a_one_sentence_request_behind_96_long_texts_is_admitted_in_the_first_rounds() -> None:
    """The running batch holds 8 beam-4 sentences (32 rows); a 96-text request fills it, then a
    one-sentence request arrives. Each round one running sentence finishes. Under FIFO the probe would
    wait for ~88 sentences; fair admission (fewest running sentences first) takes it at the next free
    slot."""
    scheduler = Scheduler(Budget(max_tokens=1 << 20, max_rows=32))
    queue = RequestQueue(4096)
    big = request(96, tokens=60)
    queue.put(big)
    running = scheduler.schedule(queue, [], now=0.0).admit
    assert len(running) == 8 and all(s.request is big[0].request for s in running)

    probe = request(1, tokens=5)
    queue.put(probe)
    admitted_at = None
    for round_ in range(1, 4):
        running = running[1:]  # one sentence finished this step
        running += scheduler.schedule(queue, running, now=0.0).admit
        if probe[0] in running:
            admitted_at = round_
            break
    assert admitted_at == 1


def test_the_newcomer_reserve_lets_a_one_sentence_request_start_while_the_batch_is_full() -> None:
    """With 1/8 of the budgets reserved, the 96-text request stops at 7 of 8 possible sentences, and the
    probe joins at the very next admission, before any running sentence has finished."""
    scheduler = Scheduler(Budget(max_tokens=1 << 20, max_rows=32, newcomer_reserve=0.125))
    queue = RequestQueue(4096)
    queue.put(request(96, tokens=60))
    running = scheduler.schedule(queue, [], now=0.0).admit
    assert len(running) == 7  # 28 rows: the last 4 are kept for newcomers
    assert scheduler.schedule(queue, running, now=0.0).admit == []  # still nothing for the big one
    probe = request(1, tokens=5)
    queue.put(probe)
    assert scheduler.schedule(queue, running, now=0.0).admit == probe


def test_fair_admission_alternates_between_waiting_requests() -> None:
    scheduler = Scheduler(Budget(max_tokens=1 << 20, max_rows=16))
    queue = RequestQueue(4096)
    a, b = request(10), request(10)
    queue.put(a)
    queue.put(b)
    admitted = scheduler.schedule(queue, [], now=0.0).admit
    assert [s.request.id for s in admitted] == [a[0].request.id, b[0].request.id] * 2
    assert [s.index for s in admitted] == [0, 0, 1, 1]  # each request's sentences stay in order


def test_a_sentence_that_does_not_fit_stops_admission_and_an_oversized_one_runs_alone() -> None:
    scheduler = Scheduler(Budget(max_tokens=500, max_rows=128))
    queue = RequestQueue(4096)
    huge = request(1, tokens=100)  # cost 4 * (100 + 210) = 1240 > 500
    small = request(1, tokens=5)
    queue.put(huge)
    queue.put(small)
    assert scheduler.schedule(queue, [], now=0.0).admit == huge  # alone: nothing else in the batch
    assert scheduler.schedule(queue, huge, now=0.0).admit == []  # the batch is over budget: it waits
    assert len(queue) == 1


def test_schedule_purges_expired_and_cancelled_sentences() -> None:
    scheduler = Scheduler(Budget(max_tokens=1 << 20, max_rows=128))
    queue = RequestQueue(4096)
    running = request(2, deadline=5.0)
    waiting, cancelled = request(1, deadline=5.0), request(1)
    queue.put(waiting)
    queue.put(cancelled)
    cancelled[0].request.future.cancel()
    decision = scheduler.schedule(queue, running, now=6.0)
    assert decision.stop == running
    assert set(map(id, decision.dropped)) == {id(waiting[0]), id(cancelled[0])}
    assert decision.admit == [] and len(queue) == 0


def test_newcomers_wait_for_company_while_the_batch_is_busy() -> None:
    scheduler = Scheduler(Budget(max_tokens=1 << 20, max_rows=128, admit_batch=3, admit_every_steps=4))
    queue = RequestQueue(4096)
    running = request(1)
    queue.put(request(1))
    assert [len(scheduler.schedule(queue, running, now=0.0).admit) for _ in range(4)] == [0, 0, 0, 1]
    queue.put(request(3))
    assert len(scheduler.schedule(queue, running, now=0.0).admit) == 3
