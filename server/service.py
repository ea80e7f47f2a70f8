"""``TranslationService``: the one transport-neutral serving API under the gRPC servicer and the HTTP API.

A transport maps its wire format onto a ``TranslationRequest`` and calls ``translate``/``detect``
inside ``call`` (in-flight and drain accounting, metrics); failures are ``TranslationError``s
(``ValueError``s from bad options included), which the transport maps back with ``status_of``.
The service owns every rule both transports share: the per-request limits, model routing,
``source_language: "auto"`` detection (``text_routing``), option validation, engine submission
(off the event loop for large batches) and cancellation, and the drain.

It never touches tensors and never blocks the event loop on the model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from ferry.model.options import (
    DecodeOptions,
    EngineClosedError,
    InvalidRequestError,
    QueueFullError,
    TranslationRequest,
    TranslationResult,
)

from . import text_routing
from .config import RequestLimits
from .metrics import Metrics
from .registry import ModelRegistry, ServedModel
from .requests import RequestHandle

INLINE_SUBMIT_TEXTS = 16
"""Requests with more texts are tokenized on a helper thread instead of the event loop."""
DRAINING = "the server is shutting down and accepts no new requests; retry (another replica)"
DEADLINE_SLACK_S = 0.25
"""A call cut off this close to its deadline counts as DEADLINE_EXCEEDED: the client's deadline
passes first (and it resets the stream) while the server's copy, counted from when the call
arrived, still has the transit time left."""

TimeRemaining = Callable[[], float | None]
"""Seconds left before the call's deadline (None: no deadline), as ``grpc.ServicerContext.time_remaining``."""


@dataclass(frozen=True)
class Translated:
    """A request's answer: one result per text, in input order."""

    results: list[TranslationResult]
    model_id: str
    """The model that translated; with ``"auto"``, every model used, comma-separated."""
    model_version: str
    detected: list[tuple[str, float]] | None = None
    """With ``"auto"``: per text, the detected language and its confidence; else None."""


class TranslationService:
    """What a server does with a request, whatever transport it came by."""

    def __init__(self, registry: ModelRegistry, limits: RequestLimits | None = None, metrics: Metrics | None = None):
        self.registry = registry
        self.limits = limits or RequestLimits()
        self.metrics = metrics
        self.draining = False
        self._drain_event = asyncio.Event()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ferry-submit")
        """Helper threads for work that would block the event loop (tokenizing, detecting large batches)."""

    # ------------------------------------------------------------------ lifecycle
    def begin_drain(self) -> None:
        """From now on new calls are refused (``EngineClosedError``); ``wait_for_drain`` returns."""
        self.draining = True
        self._drain_event.set()

    async def wait_for_drain(self) -> None:
        """Return once ``begin_drain`` was called (streams stop reading then)."""
        await self._drain_event.wait()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; False if ``timeout`` seconds passed first."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def inflight(self) -> int:
        return self._inflight

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def call(self, method: str, time_remaining: TimeRemaining | None = None) -> Iterator[list[str]]:
        """Count one call in flight (refused with ``EngineClosedError`` while draining) and record its
        status and latency under ``method``. The body sets ``code[0]`` to the status name (a gRPC code
        name) when it fails; a call cut off by its transport counts as DEADLINE_EXCEEDED when its
        deadline (``time_remaining``) has passed, else as CANCELLED."""
        if self.draining:
            if self.metrics:
                self.metrics.observe(method, "UNAVAILABLE", 0.0)
            raise EngineClosedError(DRAINING)
        self._inflight += 1
        self._idle.clear()
        start = time.perf_counter()
        code = ["OK"]
        try:
            yield code
        except (asyncio.CancelledError, GeneratorExit):  # client cancelled or its deadline passed
            code[0] = "DEADLINE_EXCEEDED" if time_remaining is not None and _expired(time_remaining) else "CANCELLED"
            raise
        finally:
            if code[0] == "OK" and time_remaining is not None and time_remaining() == 0:
                # Finished after its deadline (e.g. a stream whose input ended because the deadline
                # cut the call off): the client got DEADLINE_EXCEEDED, so count that.
                code[0] = "DEADLINE_EXCEEDED"
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
            if self.metrics:
                self.metrics.observe(method, code[0], time.perf_counter() - start)

    # ------------------------------------------------------------------ requests
    def check_texts(self, texts: Sequence[str]) -> None:
        """The per-request limits (``RequestLimits``); ``InvalidRequestError`` naming the limit."""
        lim = self.limits
        if not texts:
            raise InvalidRequestError(f"texts is empty; send 1 to {lim.max_texts} texts per request")
        if len(texts) > lim.max_texts:
            raise InvalidRequestError(
                f"texts has {len(texts)} entries; the limit is {lim.max_texts} per request; "
                "split the batch or use TranslateStream"
            )
        for i, text in enumerate(texts):
            if len(text) > lim.max_text_chars:
                raise InvalidRequestError(
                    f"texts[{i}] has {len(text)} characters; the limit is {lim.max_text_chars} per text; "
                    "split it into sentences"
                )

    async def translate(self, request: TranslationRequest, *, wait_for_queue: bool = False) -> Translated:
        """Translate ``request`` (limits, routing, ``"auto"`` detection, options, engine). A full queue
        fails at once with ``QueueFullError`` unless ``wait_for_queue`` (stream batches), which waits
        for room until the request's deadline or a drain. Cancelling the caller cancels the work."""
        if text_routing.is_auto(request.source_language):
            return await text_routing.translate_auto(self, request, wait_for_queue=wait_for_queue)
        model, options = self.validate(request)
        handle = await self.submit(model, list(request.texts), options, request.deadline, wait_for_queue=wait_for_queue)
        results = await self.results(handle)
        if self.metrics:
            self.metrics.texts.labels(model.model_id).inc(len(request.texts))
        return Translated(results, model.model_id, model.version)

    async def detect(self, texts: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Per text, candidate languages best first (within the per-request limits)."""
        self.check_texts(texts)
        return await text_routing.detect_texts(self.pool, list(texts))

    # ------------------------------------------------------------------ steps (used by text_routing)
    def validate(self, request: TranslationRequest, source: str | None = None) -> tuple[ServedModel, DecodeOptions]:
        """Limits, model and options; ``source`` overrides ``request.source_language`` (detected)."""
        self.check_texts(request.texts)
        src = request.source_language if source is None else source
        model = self.registry.resolve(src, request.target_language, request.model_id)
        text = dataclasses.replace(request.options.text, language=model.source_language or None)
        options = dataclasses.replace(request.options, text=text)
        try:
            options.validate(model.max_length)
        except ValueError as exc:
            raise InvalidRequestError(f"options.{exc}") from None
        return model, options

    async def submit(
        self,
        model: ServedModel,
        texts: list[str],
        options: DecodeOptions,
        deadline: float | None,
        *,
        wait_for_queue: bool,
    ) -> RequestHandle:
        """``Engine.submit`` without blocking the loop. Unary calls fail fast on a full queue;
        stream batches wait for room (with backoff) until their deadline or a drain."""
        delay = 0.005
        while True:
            try:
                return await self._submit_once(model, texts, options, deadline)
            except QueueFullError:
                if wait_for_queue and self.draining:  # never admitted: the client resends it elsewhere
                    raise EngineClosedError(DRAINING) from None
                if not wait_for_queue:
                    raise
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    @staticmethod
    async def results(*handles: RequestHandle) -> list[TranslationResult]:
        """The results of ``handles`` (concatenated); cancelling the caller cancels them all."""
        try:
            parts = await asyncio.gather(*(asyncio.wrap_future(h.future) for h in handles))
        except asyncio.CancelledError:
            for h in handles:
                h.cancel()  # client went away or its deadline passed: free the batch rows
            raise
        return [r for part in parts for r in part]

    async def _submit_once(
        self, model: ServedModel, texts: list[str], options: DecodeOptions, deadline: float | None
    ) -> RequestHandle:
        submit = partial(model.engine.submit, texts, options, deadline=deadline)
        if len(texts) <= INLINE_SUBMIT_TEXTS:
            return submit()
        future = asyncio.get_running_loop().run_in_executor(self.pool, submit)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_cancel_handle)
            raise


def deadline_after(remaining: float | None) -> float | None:
    """The ``time.monotonic()`` deadline ``remaining`` seconds from now (None: none)."""
    return None if remaining is None else time.monotonic() + remaining


def _expired(time_remaining: TimeRemaining) -> bool:
    """Whether the call's deadline has passed (within ``DEADLINE_SLACK_S``)."""
    remaining = time_remaining()
    return remaining is not None and remaining <= DEADLINE_SLACK_S


def _cancel_handle(future: Future[RequestHandle] | asyncio.Future[RequestHandle]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().cancel()
