"""Admission policy, all of it: ``Scheduler.schedule`` decides before every decode step which waiting
sentences join the running batch and which sentences (queued or running) leave it, and returns that as
a plain ``SchedulerOutput``; the engine carries it out.

Budgets are in decoder rows and in tokens. A sentence *reserves* ``rows * (source tokens + output
limit)`` tokens (``Sentence.cost``), the most attention positions its rows can ever hold, so an admitted
sentence can always run to its end without pre-emption.

Fairness: sentences are picked one at a time from the request with the *fewest sentences in the running
batch* (ties: the request that arrived first), so a request of many texts takes at most its share of
the batch and a one-sentence request that arrives behind it joins at the next admission instead of
waiting for all of its texts. A request with sentences running leaves ``newcomer_reserve`` of the
budgets free, so such a newcomer finds room at once, without waiting for a running sentence to end
(no pre-emption is needed). Admission stops at the first picked sentence that does not fit (it is
never overtaken forever), and a sentence larger than the whole budget still runs, alone, when nothing
else does (it never starves).

Batching: while sentences run, newcomers join once ``admit_batch`` of them wait or after
``admit_every_steps`` steps (one encoder batch for several arrivals instead of one per arrival); into
an idle batch they join at once.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from .queue import RequestQueue
from .requests import Sentence


@dataclass(frozen=True)
class Budget:
    max_tokens: int
    """Most tokens reserved by the running batch (sum of ``Sentence.cost``)."""
    max_rows: int
    """Most decoder rows in the running batch (a sentence takes ``beam_size`` rows)."""
    admit_batch: int = 1
    """While sentences run, newcomers join once this many wait (see ``EngineConfig.admit_batch``)."""
    admit_every_steps: int = 1
    """... or after this many steps, whichever comes first."""
    newcomer_reserve: float = 0.0
    """Fraction of both budgets a request with sentences running may not fill (kept for newcomers)."""


@dataclass
class Usage:
    """What the running batch currently holds."""

    rows: int = 0
    tokens: int = 0
    sequences: int = 0

    def add(self, sentence: Sentence) -> None:
        self.rows += sentence.rows
        self.tokens += sentence.cost
        self.sequences += 1

    @classmethod
    def of(cls, sentences: Iterable[Sentence]) -> Usage:
        usage = cls()
        for s in sentences:
            usage.add(s)
        return usage


@dataclass
class SchedulerOutput:
    """One scheduling decision; the engine executes it in this order: ``stop``, ``expired``, ``admit``."""

    admit: list[Sentence] = field(default_factory=list)
    """Waiting sentences (already taken off the queue) to encode and join the running batch."""
    stop: list[Sentence] = field(default_factory=list)
    """Running sentences to remove: their request resolved (cancelled, failed) or expired."""
    dropped: list[Sentence] = field(default_factory=list)
    """Waiting sentences taken off the queue for the same reasons (no model work to undo)."""

    @property
    def ended(self) -> list[Sentence]:
        """Every sentence leaving: the engine fails the expired ones' requests."""
        return [*self.stop, *self.dropped]


class Scheduler:
    def __init__(self, budget: Budget) -> None:
        if budget.max_tokens < 1 or budget.max_rows < 1:
            raise ValueError(f"budgets must be >= 1, got {budget}")
        self.budget = budget
        self._waited_steps = 0
        """Scheduling rounds since the queue became non-empty while the batch was busy."""

    def schedule(self, queue: RequestQueue, running: list[Sentence], now: float) -> SchedulerOutput:
        """Decide this step: purge dead sentences (queued and running), then admit what is due."""
        out = SchedulerOutput(dropped=queue.expire(now), stop=self.dead(running, now))
        stopped = {id(s) for s in out.stop}
        live = [s for s in running if id(s) not in stopped]
        if self._admission_due(len(queue), busy=bool(live)):
            self._waited_steps = 0
            out.admit = self.admit(queue, live)
        return out

    def _admission_due(self, waiting: int, *, busy: bool) -> bool:
        if not waiting:
            self._waited_steps = 0
            return False
        self._waited_steps += 1
        b = self.budget
        return not busy or waiting >= b.admit_batch or self._waited_steps >= b.admit_every_steps

    def fits(self, sentence: Sentence, usage: Usage, *, running: int = 0) -> bool:
        """Whether ``sentence`` may join a batch that holds ``usage`` (an empty batch takes anything).
        ``running``: sentences of its request already in the batch; then the newcomer reserve stays free."""
        if usage.sequences == 0:
            return True
        b = self.budget
        keep = 1.0 - b.newcomer_reserve if running else 1.0
        return usage.rows + sentence.rows <= b.max_rows * keep and usage.tokens + sentence.cost <= b.max_tokens * keep

    def admit(self, queue: RequestQueue, running: list[Sentence]) -> list[Sentence]:
        """Take waiting sentences that fit next to ``running``, fairly across requests (fewest running
        sentences first, then arrival order). Sentences of already-resolved requests are dropped."""
        usage = Usage.of(running)
        share = Counter(s.request.id for s in running)
        admitted: list[Sentence] = []
        with queue.locked():
            heap = [(share[rid], rank, rid) for rid, rank in queue.heads().items()]
            heapq.heapify(heap)
            self._pick(queue, heap, usage, admitted)
        return admitted

    def _pick(self, queue: RequestQueue, heap: list[tuple[int, int, int]], usage: Usage, out: list[Sentence]) -> None:
        """Pop (running share, arrival rank, request id) entries fairly until a sentence does not fit."""
        while heap:
            count, rank, rid = heap[0]
            head = queue.peek(rid)
            if head is None:
                heapq.heappop(heap)
                continue
            if not head.request.done and not self.fits(head, usage, running=count):
                break
            queue.pop(rid)
            if head.request.done:
                continue  # cancelled meanwhile: dropped, costs nothing
            usage.add(head)
            out.append(head)
            heapq.heapreplace(heap, (count + 1, rank, rid))

    @staticmethod
    def dead(sentences: Iterable[Sentence], now: float) -> list[Sentence]:
        """Sentences that need no more work: their request resolved (cancelled, failed) or its deadline
        passed."""
        return [s for s in sentences if s.request.done or s.request.expired(now)]
