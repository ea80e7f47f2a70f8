"""Request and sentence objects of the serving engine (options, results and errors: ``ferry.model.options``).

A *request* is one ``Engine.submit`` call: a list of texts, one ``DecodeOptions`` and an optional
deadline, answered by one ``concurrent.futures.Future``. The engine splits it into *sentences*, the
unit the scheduler admits into the running batch and the runner decodes (``beam_size`` rows each).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import NamedTuple

from ferry.model.options import (
    DeadlineExceededError,
    DecodeOptions,
    EngineClosedError,
    EngineError,
    InputTooLongError,
    QueueFullError,
    TranslationFailedError,
    TranslationResult,
)

__all__ = [
    "DeadlineExceededError",
    "DecodeOptions",
    "EngineClosedError",
    "EngineError",
    "InputTooLongError",
    "LaneKey",
    "QueueFullError",
    "Request",
    "RequestHandle",
    "Sentence",
    "TranslationFailedError",
]


class LaneKey(NamedTuple):
    """Sentences that share one searcher (and one decoder cache) in the runner."""

    beam_size: int
    length_penalty: float
    num_hypotheses: int
    group: int = 0
    """0 for normal traffic; a retry after a failure gets a fresh group so it runs isolated."""


# ---------------------------------------------------------------------------------------------- requests
_request_ids = itertools.count(1)
_sequence_ids = itertools.count(1)


class Request:
    """One ``submit`` call. ``results``/``remaining`` are written by the engine's worker thread only;
    other threads see the request's state through ``future`` (thread-safe)."""

    def __init__(
        self,
        sentences_count: int,
        options: DecodeOptions,
        deadline: float | None,
        *,
        assemble: Callable[[list[TranslationResult]], list[TranslationResult]] | None = None,
        owners: list[int] | None = None,
    ) -> None:
        self.id = next(_request_ids)
        self.options = options
        self.deadline = deadline
        self.created = time.monotonic()
        self.future: Future[list[TranslationResult]] = Future()
        self.results: list[TranslationResult | None] = [None] * sentences_count
        """One per sentence of the request (``ferry.model.pipeline.split_texts``)."""
        self.remaining = 0
        """Sentences still to translate."""
        self._assemble = assemble
        self.owners = owners if owners is not None else list(range(sentences_count))
        """``owners[i]``: the text sentence ``i`` belongs to (error messages name the text)."""

    @property
    def done(self) -> bool:
        """Resolved: finished, failed, expired or cancelled. Its sentences need no more work."""
        return self.future.done()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def complete(self) -> bool:
        """Resolve with one result per text, assembled from every sentence's result."""
        results = [r for r in self.results if r is not None]
        return self.resolve(self._assemble(results) if self._assemble is not None else results)

    def resolve(self, result: list[TranslationResult] | None = None, error: BaseException | None = None) -> bool:
        """Set the future's outcome unless it is already resolved (e.g. cancelled meanwhile)."""
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result if result is not None else [])
        except InvalidStateError:  # cancelled (or resolved) concurrently
            return False
        return True


@dataclass(eq=False)
class Sentence:
    """One non-empty text of a request: the unit of scheduling."""

    request: Request
    index: int
    """Position in the request's sentences."""
    ids: list[int]
    """Source token ids, EOS included."""
    limit: int
    """Most output tokens (``Translator.output_limit``)."""
    group: int = 0
    seq_id: int = field(default_factory=lambda: next(_sequence_ids))

    @property
    def rows(self) -> int:
        """Decoder rows the sentence occupies while it runs."""
        return self.request.options.beam_size

    @property
    def cost(self) -> int:
        """Tokens it reserves in the batch budget: ``rows * (source tokens + output limit)``, the most
        self- and cross-attention positions its rows can ever hold."""
        return self.rows * (len(self.ids) + self.limit)

    @property
    def lane(self) -> LaneKey:
        o = self.request.options
        return LaneKey(o.beam_size, o.length_penalty, o.num_hypotheses, self.group)


class RequestHandle:
    """What ``Engine.submit`` returns: the request id, its future and a way to cancel it."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.id = request.id
        self.future = request.future
        """Resolves to one ``TranslationResult`` per input text, in input order, or fails with an
        ``EngineError`` (``DeadlineExceededError``, ``TranslationFailedError``, ``EngineClosedError``)
        or ``CancelledError``."""

    def cancel(self) -> None:
        """Stop the request: its queued sentences are dropped now, its running ones leave the batch at
        the next step, and the future is cancelled. No effect once it has resolved."""
        self.future.cancel()

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> list[TranslationResult]:
        return self.future.result(timeout)

    def __repr__(self) -> str:
        return f"RequestHandle(id={self.id}, done={self.future.done()})"
