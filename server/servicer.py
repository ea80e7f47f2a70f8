"""The gRPC ``TranslationService``: converts messages, validates, routes, maps errors to status codes.

It never touches tensors and never blocks the event loop on the model: work goes to a model's
``Engine`` (``submit`` returns at once; large batches are tokenized on a helper thread) and results
come back through the engine's futures. A client that cancels, or whose deadline passes, has its
request cancelled in the engine, so its sentences leave the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from ferry.model.translator import TranslationResult
from ferry.proto.v1 import translation_pb2 as pb
from ferry.proto.v1 import translation_pb2_grpc as pb_grpc

from . import text_routing
from .errors import RpcFailure, invalid, to_failure, unavailable
from .metrics import Metrics
from .registry import ModelRegistry, ServedModel
from .requests import DecodeOptions, QueueFullError, RequestHandle
from .stream_flow import DRAIN, END, StreamFlow

log = logging.getLogger("ferry.server")

INLINE_SUBMIT_TEXTS = 16
"""Requests with more texts are tokenized on a helper thread instead of the event loop."""
DRAINING = "the server is shutting down and accepts no new requests; retry (another replica)"


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits enforced before any model work (the model adds its token limit)."""

    max_texts: int = 1024
    max_text_chars: int = 10_000
    max_message_bytes: int = 16 * 1024 * 1024
    stream_window: int = 16
    """Batches of one TranslateStream read but not yet sent back (running or waiting to be sent);
    the server reads no further messages until the client has taken a response (gRPC flow
    control then slows the sender)."""
    stream_unsent_bytes: int = 4 * 1024 * 1024
    """The server reads no further messages from a TranslateStream while this many bytes of its
    responses wait to be sent (a client that does not read)."""

    def __post_init__(self) -> None:
        for name in ("max_texts", "max_text_chars", "max_message_bytes", "stream_window", "stream_unsent_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is out of range; allowed: >= 1")


def decode_options(msg: pb.DecodingOptions) -> DecodeOptions:
    """Request options over the defaults (fields left unset keep ``DecodeOptions``' defaults)."""
    default = DecodeOptions()
    beam = msg.beam_size if msg.HasField("beam_size") else default.beam_size
    return DecodeOptions(
        beam_size=beam,
        max_length=msg.max_length if msg.HasField("max_length") else default.max_length,
        length_penalty=msg.length_penalty if msg.HasField("length_penalty") else default.length_penalty,
        num_hypotheses=msg.num_hypotheses if msg.HasField("num_hypotheses") else default.num_hypotheses,
        return_scores=msg.return_scores,
    )


def to_proto(model: ServedModel, results: list[TranslationResult], options: DecodeOptions) -> pb.TranslateResponse:
    response = pb.TranslateResponse(model_id=model.model_id, model_version=model.version)
    for r in results:
        t = response.translations.add(text=r.text, input_tokens=r.input_tokens, output_tokens=r.output_tokens)
        if options.return_scores and r.score is not None:
            t.score = r.score
        if options.num_hypotheses > 1:
            scores = r.scores if options.return_scores else []
            for i, text in enumerate(r.hypotheses):
                t.hypotheses.add(text=text, score=scores[i] if i < len(scores) else 0.0)
    return response


class TranslationServicer(pb_grpc.TranslationServiceServicer):
    def __init__(self, registry: ModelRegistry, limits: RequestLimits | None = None, metrics: Metrics | None = None):
        self.registry = registry
        self.limits = limits or RequestLimits()
        self.metrics = metrics
        self.draining = False
        self._drain_event = asyncio.Event()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ferry-submit")

    # ------------------------------------------------------------------ lifecycle
    def begin_drain(self) -> None:
        """From now on new calls get UNAVAILABLE; open streams finish what they accepted, then end."""
        self.draining = True
        self._drain_event.set()

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
        self._pool.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def _call(self, method: str, context: grpc.aio.ServicerContext | None = None) -> Iterator[list[str]]:
        """Count the call in flight (refusing it while draining) and record its status and latency.
        The body sets ``code[0]`` to the status name when it fails; a call cut off by gRPC counts
        as DEADLINE_EXCEEDED when its deadline has passed, else as CANCELLED."""
        if self.draining:
            if self.metrics:
                self.metrics.observe(method, "UNAVAILABLE", 0.0)
            raise unavailable(DRAINING)
        self._inflight += 1
        self._idle.clear()
        start = time.perf_counter()
        code = ["OK"]
        try:
            yield code
        except (asyncio.CancelledError, GeneratorExit):  # client cancelled or its deadline passed
            code[0] = "DEADLINE_EXCEEDED" if context is not None and _expired(context) else "CANCELLED"
            raise
        finally:
            if code[0] == "OK" and context is not None and context.time_remaining() == 0:
                # Finished after its deadline (e.g. a stream whose input ended because the deadline
                # cut the call off): the client got DEADLINE_EXCEEDED, so count that.
                code[0] = "DEADLINE_EXCEEDED"
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
            if self.metrics:
                self.metrics.observe(method, code[0], time.perf_counter() - start)

    # ------------------------------------------------------------------ RPCs
    async def Translate(self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext) -> pb.TranslateResponse:
        failure: RpcFailure | None = None
        try:
            with self._call("Translate", context) as code:
                try:
                    response = await self._translate(request, context, wait_for_queue=False)
                    response.request_id = request.request_id
                    return response
                except Exception as exc:
                    failure = to_failure(exc)
                    code[0] = failure.code.name
        except RpcFailure as exc:  # refused: draining
            failure = exc
        assert failure is not None
        await context.abort(failure.code, failure.message)
        raise AssertionError("unreachable: abort raises")

    async def TranslateStream(
        self, request_iterator: AsyncIterator[pb.TranslateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateStreamResponse]:
        failure: RpcFailure | None = None
        try:
            with self._call("TranslateStream", context) as code:
                try:
                    async for item in self._stream(request_iterator, context):
                        if item is None:
                            raise unavailable(DRAINING + "; batches answered on this stream are final, resend the rest")
                        yield item
                except Exception as exc:
                    failure = to_failure(exc)
                    code[0] = failure.code.name
        except RpcFailure as exc:  # refused: draining
            failure = exc
        if failure is not None:
            await context.abort(failure.code, failure.message)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse()
        for m in self.registry:
            response.models.add(
                model_id=m.model_id,
                version=m.version,
                source_language=m.source_language,
                target_language=m.target_language,
                device=m.device,
                dtype=m.dtype,
                limits=pb.Limits(
                    max_texts=self.limits.max_texts,
                    max_text_chars=self.limits.max_text_chars,
                    max_input_tokens=m.max_input_tokens,
                    max_beam_size=m.max_beam_size,
                    max_length=m.max_length,
                    max_message_bytes=self.limits.max_message_bytes,
                ),
            )
        if self.metrics:
            self.metrics.observe("ListModels", "OK", 0.0)
        return response

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        failure: RpcFailure | None = None
        try:
            with self._call("Detect", context) as code:
                try:
                    self._check_texts(request.texts)
                    return await text_routing.detect_response(self._pool, list(request.texts))
                except Exception as exc:
                    failure = to_failure(exc)
                    code[0] = failure.code.name
        except RpcFailure as exc:  # refused: draining
            failure = exc
        assert failure is not None
        await context.abort(failure.code, failure.message)
        raise AssertionError("unreachable: abort raises")

    # ------------------------------------------------------------------ one batch
    def _validate(self, request: pb.TranslateRequest, source: str | None = None) -> tuple[ServedModel, DecodeOptions]:
        """Limits, model and options; ``source`` overrides ``request.source_language`` (detected)."""
        self._check_texts(request.texts)
        src = request.source_language if source is None else source
        model = self.registry.resolve(src, request.target_language, request.model_id)
        options = text_routing.with_text_options(decode_options(request.options), request, model.source_language)
        try:
            options.validate(model.max_length)
        except ValueError as exc:
            raise invalid(f"options.{exc}") from None
        return model, options

    def _check_texts(self, texts: Sequence[str]) -> None:
        lim = self.limits
        if not texts:
            raise invalid(f"texts is empty; send 1 to {lim.max_texts} texts per request")
        if len(texts) > lim.max_texts:
            raise invalid(
                f"texts has {len(texts)} entries; the limit is {lim.max_texts} per request; "
                "split the batch or use TranslateStream"
            )
        for i, text in enumerate(texts):
            if len(text) > lim.max_text_chars:
                raise invalid(
                    f"texts[{i}] has {len(text)} characters; the limit is {lim.max_text_chars} per text; "
                    "split it into sentences"
                )

    async def _translate(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext, *, wait_for_queue: bool
    ) -> pb.TranslateResponse:
        if text_routing.is_auto(request):
            return await text_routing.translate_auto(self, request, context, wait_for_queue=wait_for_queue)
        model, options = self._validate(request)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        texts = list(request.texts)
        handle = await self._submit(model, texts, options, deadline, wait_for_queue=wait_for_queue)
        try:
            results = await asyncio.wrap_future(handle.future)
        except asyncio.CancelledError:
            handle.cancel()  # client went away or its deadline passed: free the batch rows
            raise
        if self.metrics:
            self.metrics.texts.labels(model.model_id).inc(len(texts))
        return to_proto(model, results, options)

    async def _submit(
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
                    raise unavailable(DRAINING) from None
                if not wait_for_queue:
                    raise
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _submit_once(
        self, model: ServedModel, texts: list[str], options: DecodeOptions, deadline: float | None
    ) -> RequestHandle:
        submit = partial(model.engine.submit, texts, options, deadline=deadline)
        if len(texts) <= INLINE_SUBMIT_TEXTS:
            return submit()
        future = asyncio.get_running_loop().run_in_executor(self._pool, submit)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(_cancel_handle)
            raise

    # ------------------------------------------------------------------ streams
    async def _stream(
        self, request_iterator: AsyncIterator[pb.TranslateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateStreamResponse | None]:
        """Responses as batches finish; a final None means the stream stopped reading for a drain.
        Flow control follows responses sent (``StreamFlow``); an unreadable message ends the call
        at once with its status; when the call ends, every batch still running is cancelled."""
        flow = StreamFlow(self.limits.stream_window, self.limits.stream_unsent_bytes)
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: pb.TranslateRequest, request_id: str) -> None:
            try:
                response = await self._translate(request, context, wait_for_queue=True)
                response.request_id = request_id
                item = pb.TranslateStreamResponse(request_id=request_id, response=response)
                code = "OK"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = to_failure(exc)
                error = pb.Status(code=failure.code.value[0], message=failure.message)
                item = pb.TranslateStreamResponse(request_id=request_id, error=error)
                code = failure.code.name
            if self.metrics:
                self.metrics.stream_batches.labels(code).inc()
            flow.put(item)

        async def read() -> None:
            messages = aiter(request_iterator)
            position = 0
            try:
                while True:
                    await flow.admit()
                    request = await self._next_or_drain(messages)
                    if request is END or request is DRAIN:
                        flow.unadmit()
                        break
                    assert isinstance(request, pb.TranslateRequest)
                    request_id = request.request_id or str(position)
                    position += 1
                    task = asyncio.create_task(one(request, request_id))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an undecodable message or a broken transport: end the call now
                flow.finish(to_failure(exc))
                return
            while tasks:
                await asyncio.gather(*list(tasks))
            flow.finish(request)

        reader = asyncio.create_task(read())

        def cancel_all(*_: object) -> None:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

        context.add_done_callback(cancel_all)  # the call ended (cancel, deadline): free everything at once
        try:
            while True:
                item, size = await flow.next()
                if isinstance(item, RpcFailure):
                    raise item
                if item is END:
                    return
                if item is DRAIN:
                    yield None
                    return
                assert isinstance(item, pb.TranslateStreamResponse)
                yield item
                flow.sent(size)  # resumed: gRPC has taken the response
        finally:
            cancel_all()

    async def _next_or_drain(self, messages: AsyncIterator[pb.TranslateRequest]) -> pb.TranslateRequest | object:
        """The stream's next message, ``END`` at its end or ``DRAIN`` once the server drains.
        Whatever happens to the caller, the read it started is finished or cancelled and its
        outcome retrieved (a cancelled call logs nothing)."""
        if self.draining:
            return DRAIN
        read = asyncio.ensure_future(anext(messages))
        read.add_done_callback(_retrieve)
        drain = asyncio.ensure_future(self._drain_event.wait())
        try:
            await asyncio.wait({read, drain}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the call was cancelled while waiting
            read.cancel()
            raise
        finally:
            drain.cancel()
        if not read.done():
            read.cancel()
            return DRAIN
        try:
            return read.result()
        except StopAsyncIteration:
            return END


DEADLINE_SLACK_S = 0.25
"""A call cut off this close to its deadline counts as DEADLINE_EXCEEDED: the client's deadline
passes first (and it resets the stream) while the server's copy, counted from when the call
arrived, still has the transit time left."""


def _expired(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's deadline has passed (within ``DEADLINE_SLACK_S``)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= DEADLINE_SLACK_S


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a finished read's exception as retrieved, so asyncio logs nothing about it."""
    if not task.cancelled():
        task.exception()


def _cancel_handle(future: Future[RequestHandle] | asyncio.Future[RequestHandle]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().cancel()
