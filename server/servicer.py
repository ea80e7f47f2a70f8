"""The gRPC ``TranslationService``: maps protos onto ``TranslationRequest`` and back, and failures to status codes.

Everything else (limits, routing, ``"auto"`` detection, option validation, engine submission and
cancellation, in-flight and drain accounting, metrics) is the transport-neutral ``TranslationService``
(service.py), which the HTTP API uses too. A client that cancels, or whose deadline passes, has its
request cancelled in the engine, so its sentences leave the batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from ferry.model.options import DecodeOptions, TranslationError, TranslationRequest
from ferry.proto.v1 import translation_pb2 as pb
from ferry.proto.v1 import translation_pb2_grpc as pb_grpc

from ferry.text import TextOptions

from .config import RequestLimits
from .errors import RpcFailure, to_failure, unavailable
from .metrics import Metrics
from .registry import ModelRegistry
from .service import DRAINING, Translated, TranslationService, deadline_after
from .stream_flow import DRAIN, END, StreamFlow

R = TypeVar("R")

__all__ = ["RequestLimits", "TranslationServicer", "decode_options", "to_proto", "translation_request"]


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


def translation_request(message: pb.TranslateRequest, deadline: float | None) -> TranslationRequest:
    """The shared request for a ``TranslateRequest`` message (``format`` and ``no_sentence_split``
    become the text options)."""
    html = message.format == pb.TEXT_FORMAT_HTML
    text = TextOptions(split_sentences=not message.no_sentence_split, format="html" if html else "text")
    return TranslationRequest(
        texts=tuple(message.texts),
        options=dataclasses.replace(decode_options(message.options), text=text),
        source_language=message.source_language,
        target_language=message.target_language,
        model_id=message.model_id,
        deadline=deadline,
        request_id=message.request_id,
    )


def to_proto(translated: Translated, options: DecodeOptions) -> pb.TranslateResponse:
    response = pb.TranslateResponse(model_id=translated.model_id, model_version=translated.model_version)
    for i, r in enumerate(translated.results):
        t = response.translations.add(text=r.text, input_tokens=r.input_tokens, output_tokens=r.output_tokens)
        if options.return_scores and r.score is not None:
            t.score = r.score
        if options.num_hypotheses > 1:
            scores = r.scores if options.return_scores else []
            for j, text in enumerate(r.hypotheses):
                t.hypotheses.add(text=text, score=scores[j] if j < len(scores) else 0.0)
        if translated.detected is not None:
            t.detected_language, t.detection_confidence = translated.detected[i]
    return response


class TranslationServicer(pb_grpc.TranslationServiceServicer):
    """The gRPC transport over a ``TranslationService``."""

    def __init__(self, service: TranslationService) -> None:
        self.service = service

    @property
    def registry(self) -> ModelRegistry:
        return self.service.registry

    @property
    def limits(self) -> RequestLimits:
        return self.service.limits

    @property
    def metrics(self) -> Metrics | None:
        return self.service.metrics

    @property
    def inflight(self) -> int:
        return self.service.inflight

    # ------------------------------------------------------------------ RPCs
    async def _unary(self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[R]]) -> R:
        """Run one unary call's ``work`` as a counted call (metrics, drain refusal) and turn any
        failure into the call's gRPC status."""
        failure: RpcFailure | None = None
        try:
            with self.service.call(method, context.time_remaining) as code:
                try:
                    return await work()
                except Exception as exc:
                    failure = to_failure(exc)
                    code[0] = failure.code.name
        except TranslationError as exc:  # refused: draining
            failure = to_failure(exc)
        assert failure is not None
        await context.abort(failure.code, failure.message)
        raise AssertionError("unreachable: abort raises")

    async def Translate(self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext) -> pb.TranslateResponse:
        async def work() -> pb.TranslateResponse:
            response = await self._translate(request, context, wait_for_queue=False)
            response.request_id = request.request_id
            return response

        return await self._unary("Translate", context, work)

    async def TranslateStream(
        self, request_iterator: AsyncIterator[pb.TranslateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateStreamResponse]:
        failure: RpcFailure | None = None
        try:
            with self.service.call("TranslateStream", context.time_remaining) as code:
                try:
                    async for item in self._stream(request_iterator, context):
                        if item is None:
                            raise unavailable(DRAINING + "; batches answered on this stream are final, resend the rest")
                        yield item
                except Exception as exc:
                    failure = to_failure(exc)
                    code[0] = failure.code.name
        except TranslationError as exc:  # refused: draining
            failure = to_failure(exc)
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
        async def work() -> pb.DetectResponse:
            response = pb.DetectResponse()
            for candidates in await self.service.detect(list(request.texts)):
                detection = response.detections.add()
                for language, confidence in candidates:
                    detection.languages.add(language=language, confidence=confidence)
            return response

        return await self._unary("Detect", context, work)

    # ------------------------------------------------------------------ one batch
    async def _translate(
        self, message: pb.TranslateRequest, context: grpc.aio.ServicerContext, *, wait_for_queue: bool
    ) -> pb.TranslateResponse:
        request = translation_request(message, deadline_after(context.time_remaining()))
        translated = await self.service.translate(request, wait_for_queue=wait_for_queue)
        return to_proto(translated, request.options)

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
        if self.service.draining:
            return DRAIN
        read = asyncio.ensure_future(anext(messages))
        read.add_done_callback(_retrieve)
        drain = asyncio.ensure_future(self.service.wait_for_drain())
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


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a finished read's exception as retrieved, so asyncio logs nothing about it."""
    if not task.cancelled():
        task.exception()
