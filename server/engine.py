"""The continuous-batching engine: public facade plus the one worker thread that runs the model.

Callers (the asyncio gRPC servicer, tests, any thread) ``submit`` requests and get a
``concurrent.futures.Future`` back at once; validation, tokenization and backpressure happen in the
caller's thread and raise synchronously. The worker thread loops: ask the ``Scheduler`` for a
decision (``SchedulerOutput``: sentences to stop, to drop, to admit), carry it out, run one decode step
of every lane (``ModelRunner``), resolve finished requests. The model is reached only through the
``Backend`` protocol (model/backend.py), which ``Translator`` implements. Callers never wait on
the worker except through futures, and the worker never waits on callers. See ``docs/serving.md``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial

import torch
from ferry.model.backend import Backend
from ferry.model.options import (
    DeadlineExceededError,
    DecodeOptions,
    EngineClosedError,
    EngineError,
    InputTooLongError,
    TranslationFailedError,
    TranslationResult,
    blank_result,
    check_texts,
    is_blank,
)
from ferry.model.pipeline import merge_results, split_texts

from .config import EngineConfig
from .queue import RequestQueue
from .requests import Request, RequestHandle, Sentence
from .runner import Failure, ModelRunner, StepReport
from .scheduler import Budget, Scheduler, SchedulerOutput

__all__ = ["Engine", "EngineConfig", "EngineStats", "RequestHandle", "StepEvent"]

log = logging.getLogger("ferry.server.engine")


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine, cheap to read from any thread."""

    queue_sentences: int = 0
    """Sentences waiting to be admitted."""
    active_rows: int = 0
    """Decoder rows in the running batch."""
    active_sequences: int = 0
    """Sentences in the running batch."""
    step_count: int = 0
    """Decode steps run so far (one step runs every lane once)."""
    generated_tokens: int = 0
    """Decoder positions computed so far (one per running row per step; beams count each)."""
    cache_bytes: int = 0
    """Bytes held by the decoder caches (K/V buffers as allocated)."""
    last_step_rows: int = 0
    """Rows of the latest step."""
    last_step_tokens: int = 0
    """Attention positions (source + target so far, summed over rows) of the latest step."""
    reserved_tokens: int = 0
    """Token budget in use by the running batch (see ``EngineConfig.max_batch_tokens``)."""
    inflight_requests: int = 0
    """Accepted requests not yet resolved."""
    output_tokens: int = 0
    """Tokens of the delivered best translations so far."""
    failed_sentences: int = 0
    """Sentences that failed even alone (``TranslationFailedError``)."""
    draining: bool = False
    """No new requests are admitted (``drain``/``stop`` was called)."""


@dataclass(frozen=True)
class StepEvent:
    """What ``Engine.on_step`` receives after every decode step (in the worker thread)."""

    step: int
    rows: int
    tokens: int
    sequences: int
    lanes: int
    seconds: float
    """Wall time of the step (encoding newcomers included)."""
    finished: int
    """Sentences that finished at this step."""
    request_ids: frozenset[int] = field(default_factory=frozenset)
    """Requests with rows in this step."""


class Engine:
    """Continuous batching for one ``Backend`` (a ``Translator``); one worker thread owns the model.

    >>> engine = Engine(translator); engine.start()                      # doctest: +SKIP
    >>> engine.submit(["A cat."], DecodeOptions(beam_size=1)).future.result()[0].text  # doctest: +SKIP
    """

    def __init__(self, backend: Backend, config: EngineConfig | None = None, *, name: str = "ferry-engine") -> None:
        self.backend = backend
        self.name = name
        """The worker thread's name (logs, profilers)."""
        self.config = config = config if config is not None else EngineConfig()
        model_max = backend.max_positions
        if config.max_input_tokens is not None and config.max_input_tokens > model_max:
            raise ValueError(
                f"EngineConfig.max_input_tokens={config.max_input_tokens} exceeds the model's "
                f"max_positions={model_max}; use at most {model_max}"
            )
        self.max_input_tokens = config.max_input_tokens or model_max
        self.on_step: Callable[[StepEvent], None] | None = None
        """Called in the worker thread after every step (metrics); exceptions are logged, not raised."""
        self.step_threads: Callable[[], int] | None = None
        """Called in the worker thread before each iteration: the torch intra-op threads this worker
        should use now (``EnginePool`` shares the cores among its busy engines); ``None``: leave them."""
        self._threads = 0
        self._queue = RequestQueue(config.max_queue_sentences)
        self._scheduler = Scheduler(
            Budget(
                max_tokens=config.max_batch_tokens,
                max_rows=config.max_batch_rows,
                admit_batch=config.admit_batch,
                admit_every_steps=config.admit_every_steps,
                newcomer_reserve=config.newcomer_reserve,
            )
        )
        self._runner = ModelRunner(backend, max_rows=config.max_batch_rows)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._inflight = 0
        self._inflight_cond = threading.Condition()
        self._stats = EngineStats()
        self._retry_groups = 0
        self._admitting: list[Sentence] = []
        """Sentences taken from the queue and not yet in the runner (failed on an internal error)."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker thread (once)."""
        if self._stopping.is_set():
            raise RuntimeError("this engine was stopped; create a new Engine")
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._worker, name=self.name, daemon=True)
        self._thread.start()
        log.info(
            "engine started",
            extra={
                "engine": self.name,
                "max_batch_tokens": self.config.max_batch_tokens,
                "max_batch_rows": self.config.max_batch_rows,
            },
        )

    def close(self) -> None:
        """Stop admitting new requests: ``submit`` raises ``EngineClosedError`` from now on."""
        self._queue.close()

    def drain(self, timeout: float) -> bool:
        """Stop admitting new requests (``close``) and wait up to ``timeout`` seconds for every
        accepted request to resolve. True when all did."""
        self.close()
        deadline = time.monotonic() + max(0.0, timeout)
        with self._inflight_cond:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._inflight_cond.wait(left)
        return True

    def stop(self) -> None:
        """Stop the worker after its current step; requests still queued or running fail with
        ``EngineClosedError``. Idempotent."""
        self._queue.close()
        self._stopping.set()
        self._queue.wake(stopping=True)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if thread is None or not thread.is_alive():
            self._fail_everything(EngineClosedError("the engine stopped before this request finished; retry it"))

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ callers
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Source tokens per text as the engine counts them against ``max_input_tokens`` (EOS included)."""
        return [len(ids) for ids in self.backend.tokenize(list(texts))]

    def submit(
        self,
        texts: Sequence[str],
        options: DecodeOptions | None = None,
        *,
        deadline: float | None = None,
    ) -> RequestHandle:
        """Queue ``texts`` for translation; never blocks on the model.

        ``deadline`` is a ``time.monotonic()`` time; when it passes, the request's sentences leave the
        batch and the future fails with ``DeadlineExceededError``. Raises ``ValueError`` (bad option,
        naming it and its range; non-string text), ``InputTooLongError``, ``QueueFullError`` or
        ``EngineClosedError`` synchronously. Empty (blank) texts translate to "" without model work.
        """
        options = options if options is not None else DecodeOptions()
        if not isinstance(options, DecodeOptions):
            raise ValueError(f"options must be a DecodeOptions, got {type(options).__name__}")
        texts = check_texts(texts)
        options.validate(self.backend.max_positions)
        if self._queue.closed:
            raise EngineClosedError()

        plan = split_texts(texts, options)
        request = Request(
            len(plan.sentences), options, deadline, assemble=partial(merge_results, plan), owners=plan.owners
        )
        ids = self.backend.tokenize(plan.sentences)
        sentences: list[Sentence] = []
        for i, text in enumerate(plan.sentences):
            if is_blank(text):
                request.results[i] = blank_result(options)
                continue
            n = len(ids[i])
            if n > self.max_input_tokens:
                raise InputTooLongError(plan.owners[i], n, self.max_input_tokens)
            sentences.append(Sentence(request, i, ids[i], self.backend.output_limit(n, options.max_length)))
        handle = RequestHandle(request)
        if not sentences:
            request.complete()
            return handle
        if request.expired(time.monotonic()):
            request.resolve(error=DeadlineExceededError("the request's deadline had passed before it was queued"))
            return handle
        request.remaining = len(sentences)
        with self._inflight_cond:
            self._inflight += 1
        try:
            self._queue.put(sentences)
        except EngineError:
            self._request_done()
            raise
        request.future.add_done_callback(self._make_done_callback(request))
        log.debug("request %d queued: %d sentences", request.id, len(sentences))
        return handle

    def pending_sentences(self) -> int:
        """Sentences queued or running (the running count as of the latest step): how busy it is."""
        return len(self._queue) + self._stats.active_sequences

    def stats(self) -> EngineStats:
        with self._inflight_cond:
            inflight = self._inflight
        queued, closed = len(self._queue), self._queue.closed
        return replace(self._stats, queue_sentences=queued, inflight_requests=inflight, draining=closed)

    def _make_done_callback(self, request: Request) -> Callable[[Future[list[TranslationResult]]], None]:
        def done(future: Future[list[TranslationResult]]) -> None:
            if future.cancelled() or future.exception() is not None:
                # cancelled or failed: its queued sentences go now, running ones at the next step
                self._queue.remove(lambda s: s.request is request)
                log.debug("request %d ended early: %s", request.id, "cancelled" if future.cancelled() else "failed")
            self._request_done()

        return done

    def _request_done(self) -> None:
        with self._inflight_cond:
            self._inflight -= 1
            self._inflight_cond.notify_all()

    # ------------------------------------------------------------------ worker
    def _worker(self) -> None:
        with torch.inference_mode():
            while not self._stopping.is_set():
                try:
                    worked = self._iteration()
                except Exception as e:  # a bug in the engine itself: fail what runs, keep serving
                    log.exception("engine iteration failed; failing the running sentences")
                    lost = [*self._runner.clear(), *self._admitting]
                    self._fail(lost, EngineError(f"internal engine error: {type(e).__name__}: {e}"))
                    self._admitting = []
                    worked = True
                if not worked:
                    self._queue.wait_for_work()
        self._fail_everything(EngineClosedError("the engine stopped before this request finished; retry it"))
        log.info("engine stopped")

    def _iteration(self) -> bool:
        """Schedule, carry the decision out, step once. False when there was nothing to do (the worker
        may sleep)."""
        now = time.monotonic()
        t0 = time.perf_counter()
        if self.step_threads is not None:
            threads = self.step_threads()
            if threads != self._threads:  # torch keeps this per thread: the other workers are unaffected
                torch.set_num_threads(threads)
                self._threads = threads
        decision = self._scheduler.schedule(self._queue, self._runner.sentences(), now)
        self._admitting = decision.admit
        self._execute(decision, now)
        if self._runner.empty:
            self._publish(None, 0.0)
            return bool(len(self._queue))
        report = self._runner.step()
        self._deliver(report)
        self._handle_failures(report.failures)
        self._publish(report, time.perf_counter() - t0)
        return True

    def _execute(self, decision: SchedulerOutput, now: float) -> None:
        """Stop what ends (failing expired requests), then encode and join the admitted sentences."""
        if decision.stop:
            self._handle_failures(self._runner.remove(decision.stop))
        for s in decision.ended:
            if not s.request.done and s.request.expired(now):
                waited = now - s.request.created
                done = len(s.request.results) - s.request.remaining
                s.request.resolve(
                    error=DeadlineExceededError(
                        f"deadline exceeded after {waited:.3f}s with {done} of {len(s.request.results)} sentences done"
                    )
                )
        if decision.admit:
            self._handle_failures(self._runner.admit(decision.admit))
        self._admitting = []

    def _deliver(self, report: StepReport) -> None:
        for f in report.finished:
            req = f.sentence.request
            if req.done:
                continue
            result = self.backend.make_result(f.hypotheses, len(f.sentence.ids), req.options.return_scores)
            req.results[f.sentence.index] = result
            req.remaining -= 1
            self._bump(output_tokens=result.output_tokens)
            if req.remaining == 0:
                req.complete()

    def _handle_failures(self, failures: list[Failure]) -> None:
        """Retry failed sentences in isolated halves; one that fails alone fails its request."""
        for failure in failures:
            live = [s for s in failure.sentences if not s.request.done]
            if not live:
                continue
            if len(live) == 1:
                s = live[0]
                reason = f"{type(failure.error).__name__}: {failure.error}"
                s.request.resolve(error=TranslationFailedError(s.request.owners[s.index], reason))
                self._bump(failed_sentences=1)
                continue
            half = (len(live) + 1) // 2
            retry: list[Sentence] = []
            for part in (live[:half], live[half:]):
                self._retry_groups += 1
                for s in part:
                    s.group = self._retry_groups
                retry.extend(part)
            log.info("retrying %d sentences in two isolated halves after a %s failure", len(live), failure.stage)
            self._queue.put_front(retry)

    def _fail(self, sentences: Sequence[Sentence], error: EngineError) -> None:
        for s in sentences:
            s.request.resolve(error=error)

    def _fail_everything(self, error: EngineError) -> None:
        self._fail([*self._runner.clear(), *self._queue.drain_all()], error)

    def _bump(self, **deltas: int) -> None:
        s = self._stats
        self._stats = replace(s, **{k: getattr(s, k) + v for k, v in deltas.items()})

    def _publish(self, report: StepReport | None, seconds: float) -> None:
        usage = self._runner.usage()
        prev = replace(
            self._stats,
            active_rows=usage.rows,
            active_sequences=usage.sequences,
            reserved_tokens=usage.tokens,
            cache_bytes=self._runner.cache_bytes(),
        )
        if report is None:
            self._stats = prev
            return
        step = prev.step_count + 1
        self._stats = replace(
            prev,
            step_count=step,
            generated_tokens=prev.generated_tokens + report.rows,
            last_step_rows=report.rows,
            last_step_tokens=report.tokens,
        )
        hook = self.on_step
        if hook is not None:
            event = StepEvent(
                step=step,
                rows=report.rows,
                tokens=report.tokens,
                sequences=report.sequences,
                lanes=report.lanes,
                seconds=seconds,
                finished=len(report.finished),
                request_ids=report.request_ids,
            )
            try:
                hook(event)
            except Exception:
                log.exception("on_step hook failed")
