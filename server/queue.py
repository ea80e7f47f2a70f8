"""The bounded FIFO of sentences waiting to join the running batch.

Callers (``Engine.submit``, any thread) put whole requests in at the back or get ``QueueFullError`` /
``EngineClosedError`` at once; the worker thread takes sentences from the front. The queue is the one
place caller threads and the worker share, guarded by one lock whose condition also wakes the idle
worker.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from .requests import EngineClosedError, QueueFullError, Sentence


class RequestQueue:
    """FIFO of ``Sentence``s, at most ``max_sentences`` of them from callers.

    ``put`` is all-or-nothing per request, so a request never runs partly. Retries after a failure go
    back to the front (``put_front``) regardless of the limit: they were admitted once already.
    """

    def __init__(self, max_sentences: int) -> None:
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
        self.max_sentences = max_sentences
        self._items: deque[Sentence] = deque()
        self._cond = threading.Condition(threading.RLock())
        self._closed = False
        self._stopping = False
        self._earliest_deadline = math.inf
        """No queued request expires before this (a lower bound: not raised when requests leave)."""

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ callers
    def put(self, sentences: Sequence[Sentence]) -> None:
        """Append one request's sentences, or raise without queuing any of them."""
        with self._cond:
            if self._closed:
                raise EngineClosedError()
            n = len(sentences)
            if n > self.max_sentences:
                raise QueueFullError(
                    f"request has {n} non-empty texts but the queue holds at most {self.max_sentences} sentences "
                    "(max_queue_sentences); split it into smaller requests"
                )
            if len(self._items) + n > self.max_sentences:
                raise QueueFullError(
                    f"server busy: {len(self._items)} sentences are waiting and the queue holds at most "
                    f"{self.max_sentences} (max_queue_sentences); retry later with backoff"
                )
            self._items.extend(sentences)
            for s in sentences[:1]:
                if s.request.deadline is not None:
                    self._earliest_deadline = min(self._earliest_deadline, s.request.deadline)
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse further ``put``s with ``EngineClosedError`` (draining); what is queued stays."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def remove(self, pred: Callable[[Sentence], bool]) -> list[Sentence]:
        """Drop and return the sentences matching ``pred`` (cancelled, expired, failed requests)."""
        with self._cond:
            if not any(pred(s) for s in self._items):
                return []
            gone = [s for s in self._items if pred(s)]
            self._items = deque(s for s in self._items if not pred(s))
            return gone

    # ------------------------------------------------------------------ worker
    def expire(self, now: float | None = None) -> list[Sentence]:
        """Drop and return the sentences of requests that are resolved or whose deadline passed. Cheap
        (no scan) until the earliest queued deadline is reached."""
        now = time.monotonic() if now is None else now
        if now < self._earliest_deadline:
            return []
        with self._cond:
            gone = self.remove(lambda s: s.request.done or s.request.expired(now))
            deadlines = {s.request.deadline for s in self._items if s.request.deadline is not None}
            self._earliest_deadline = min(deadlines, default=math.inf)
            return gone

    def put_front(self, sentences: Sequence[Sentence]) -> None:
        """Put sentences back at the front, in order (retries); ignores the size limit."""
        with self._cond:
            self._items.extendleft(reversed(sentences))
            for s in sentences:
                if s.request.deadline is not None:
                    self._earliest_deadline = min(self._earliest_deadline, s.request.deadline)
            self._cond.notify_all()

    def take(self, admit: Callable[[Sentence], bool]) -> list[Sentence]:
        """Pop sentences from the front while ``admit(sentence)`` says yes (strict FIFO: the first
        refusal stops, so a large sentence is never overtaken forever)."""
        out: list[Sentence] = []
        with self._cond:
            while self._items and admit(self._items[0]):
                out.append(self._items.popleft())
        return out

    def drain_all(self) -> list[Sentence]:
        """Empty the queue (shutdown) and return what was in it."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def wait_for_work(self, timeout: float | None = None) -> None:
        """Block the (idle) worker until something is queued, ``wake`` is called or ``timeout`` passes."""
        with self._cond:
            if not self._items and not self._stopping:
                self._cond.wait(timeout)

    def wake(self, *, stopping: bool = False) -> None:
        with self._cond:
            self._stopping = self._stopping or stopping
            self._cond.notify_all()
