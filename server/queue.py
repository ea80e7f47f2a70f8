"""The bounded queue of sentences waiting to join the running batch, one FIFO per request.

Callers (``Engine.submit``, any thread) put whole requests in at the back or get ``QueueFullError`` /
``EngineClosedError`` at once; the worker thread takes sentences from the front. The queue is the one
place caller threads and the worker share, guarded by one lock whose condition also wakes the idle
worker. Which request's sentence goes next is the scheduler's decision (``heads``/``peek``/``pop``,
under ``locked()``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from .requests import EngineClosedError, QueueFullError, Sentence


class RequestQueue:
    """Waiting ``Sentence``s, one FIFO per request, at most ``max_sentences`` of them from callers.

    ``put`` is all-or-nothing per request, so a request never runs partly. Retries after a failure go
    back to the front of their request (``put_front``) regardless of the limit: they were admitted once
    already; a request that had nothing queued any more gets the oldest rank.
    """

    def __init__(self, max_sentences: int) -> None:
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
        self.max_sentences = max_sentences
        self._requests: dict[int, tuple[int, deque[Sentence]]] = {}
        """request id -> (arrival rank, its waiting sentences); insertion order is arrival order."""
        self._size = 0
        self._ranks = 0
        self._cond = threading.Condition(threading.RLock())
        self._closed = False
        self._stopping = False
        self._earliest_deadline = math.inf
        """No queued request expires before this (a lower bound: not raised when requests leave)."""

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def _append(self, sentences: Sequence[Sentence], *, front: bool) -> None:
        by_request: dict[int, list[Sentence]] = {}
        for s in sentences:
            by_request.setdefault(s.request.id, []).append(s)
        for rid, group in by_request.items():
            entry = self._requests.get(rid)
            if entry is None:
                self._ranks += 1
                entry = self._requests[rid] = (-self._ranks if front else self._ranks, deque())
            if front:
                entry[1].extendleft(reversed(group))
            else:
                entry[1].extend(group)
            deadline = group[0].request.deadline
            if deadline is not None:
                self._earliest_deadline = min(self._earliest_deadline, deadline)
        self._size += len(sentences)
        self._cond.notify_all()

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
            if self._size + n > self.max_sentences:
                raise QueueFullError(
                    f"server busy: {self._size} sentences are waiting and the queue holds at most "
                    f"{self.max_sentences} (max_queue_sentences); retry later with backoff"
                )
            self._append(sentences, front=False)

    def close(self) -> None:
        """Refuse further ``put``s with ``EngineClosedError`` (draining); what is queued stays."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def remove(self, pred: Callable[[Sentence], bool]) -> list[Sentence]:
        """Drop and return the sentences matching ``pred`` (cancelled, expired, failed requests)."""
        with self._cond:
            gone: list[Sentence] = []
            for rid, (rank, items) in list(self._requests.items()):
                if not any(pred(s) for s in items):
                    continue
                gone.extend(s for s in items if pred(s))
                keep = deque(s for s in items if not pred(s))
                if keep:
                    self._requests[rid] = (rank, keep)
                else:
                    del self._requests[rid]
            self._size -= len(gone)
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
            deadlines = {items[0].request.deadline for _, items in self._requests.values()}
            self._earliest_deadline = min((d for d in deadlines if d is not None), default=math.inf)
            return gone

    def put_front(self, sentences: Sequence[Sentence]) -> None:
        """Put sentences back at the front of their requests, in order (retries); ignores the size limit."""
        with self._cond:
            self._append(sentences, front=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the queue still while the scheduler picks (``heads``, ``peek``, ``pop``)."""
        with self._cond:
            yield

    def heads(self) -> dict[int, int]:
        """Request id -> arrival rank of every request with waiting sentences."""
        return {rid: rank for rid, (rank, _) in self._requests.items()}

    def peek(self, request_id: int) -> Sentence | None:
        """The request's next waiting sentence, if any."""
        entry = self._requests.get(request_id)
        return entry[1][0] if entry else None

    def pop(self, request_id: int) -> Sentence:
        """Take the request's next waiting sentence (``peek`` said there is one)."""
        items = self._requests[request_id][1]
        s = items.popleft()
        if not items:
            del self._requests[request_id]
        self._size -= 1
        return s

    def drain_all(self) -> list[Sentence]:
        """Empty the queue (shutdown) and return what was in it."""
        with self._cond:
            items = [s for _, q in self._requests.values() for s in q]
            self._requests.clear()
            self._size = 0
            return items

    def wait_for_work(self, timeout: float | None = None) -> None:
        """Block the (idle) worker until something is queued, ``wake`` is called or ``timeout`` passes."""
        with self._cond:
            if not self._size and not self._stopping:
                self._cond.wait(timeout)

    def wake(self, *, stopping: bool = False) -> None:
        with self._cond:
            self._stopping = self._stopping or stopping
            self._cond.notify_all()
