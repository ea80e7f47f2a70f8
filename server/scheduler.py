"""Admission policy: which waiting sentences join the running batch before the next decode step.

Budgets are in decoder rows and in tokens. A sentence *reserves* ``rows * (source tokens + output
limit)`` tokens (``Sentence.cost``), the most attention positions its rows can ever hold, so an admitted
sentence can always run to its end without pre-emption. Admission is strict FIFO over all decoding
options: the first sentence that does not fit stops admission for this step (a large sentence is never
overtaken forever), and a sentence larger than the whole budget still runs, alone, when nothing else
does (it never starves).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .queue import RequestQueue
from .requests import Sentence


@dataclass(frozen=True)
class Budget:
    max_tokens: int
    """Most tokens reserved by the running batch (sum of ``Sentence.cost``)."""
    max_rows: int
    """Most decoder rows in the running batch (a sentence takes ``beam_size`` rows)."""


@dataclass
class Usage:
    """What the running batch currently holds."""

    rows: int = 0
    tokens: int = 0
    sequences: int = 0


class Scheduler:
    def __init__(self, budget: Budget) -> None:
        if budget.max_tokens < 1 or budget.max_rows < 1:
            raise ValueError(f"budgets must be >= 1, got {budget}")
        self.budget = budget

    def fits(self, sentence: Sentence, usage: Usage) -> bool:
        """Whether ``sentence`` may join a batch that holds ``usage`` (an empty batch takes anything)."""
        if usage.sequences == 0:
            return True
        return (
            usage.rows + sentence.rows <= self.budget.max_rows
            and usage.tokens + sentence.cost <= self.budget.max_tokens
        )

    def admit(self, queue: RequestQueue, usage: Usage) -> list[Sentence]:
        """Take from the front of ``queue`` every sentence that fits, in order, updating ``usage``.
        Sentences of already-resolved requests (cancelled meanwhile) are skipped, not admitted."""

        def take(s: Sentence) -> bool:
            if s.request.done:
                return True  # popped and dropped below; costs nothing
            if not self.fits(s, usage):
                return False
            usage.rows += s.rows
            usage.tokens += s.cost
            usage.sequences += 1
            return True

        return [s for s in queue.take(take) if not s.request.done]

    @staticmethod
    def dead(sentences: Iterable[Sentence], now: float) -> list[Sentence]:
        """Sentences that need no more work: their request resolved (cancelled, failed) or its deadline
        passed."""
        return [s for s in sentences if s.request.done or s.request.expired(now)]
