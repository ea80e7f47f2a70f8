"""``TranslationClient``: a typed, blocking client for a ferry server (or several replicas)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from ferry.proto.v1 import translation_pb2 as pb
from ferry.proto.v1 import translation_pb2_grpc as pb_grpc

from .channel import DEFAULT_MAX_MESSAGE_BYTES, open_channel
from .errors import FerryError
from .results import ModelInfo, Translation, translations_from_proto
from .stream import StreamJob

T = TypeVar("T")
DEFAULT_RETRY_TIMEOUT = 10.0
"""Seconds a call keeps retrying UNAVAILABLE by default: longer than a server restart."""


def decoding_options(
    *,
    beam_size: int | None = None,
    max_length: int | None = None,
    length_penalty: float | None = None,
    num_hypotheses: int | None = None,
    return_scores: bool = False,
) -> pb.DecodingOptions:
    """The options message; None leaves a field unset (the server's default applies)."""
    opts = pb.DecodingOptions(return_scores=return_scores)
    if beam_size is not None:
        opts.beam_size = beam_size
    if max_length is not None:
        opts.max_length = max_length
    if length_penalty is not None:
        opts.length_penalty = length_penalty
    if num_hypotheses is not None:
        opts.num_hypotheses = num_hypotheses
    return opts


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be a list of strings, not a single string; wrap it: [text]")
    return list(texts)  # type: ignore[call-overload]


class TranslationClient:
    """Talks to a ferry server. Use as a context manager (or call ``close``).

    ``target`` is ``HOST:PORT``, any gRPC target string, or several addresses (a list or a
    comma-separated string) with ``load_balancing="round_robin"`` to spread calls over replicas.
    Calls that fail with UNAVAILABLE (server restarting, draining or unreachable) are retried with
    exponential backoff (``backoff`` doubling up to ``max_backoff`` seconds, jittered) for up to
    ``retry_timeout`` seconds, long enough to ride out a server restart; ``retries`` caps the number
    of retries (None: no cap, 0: never retry). Every failure raises ``FerryError`` carrying the
    ``grpc.StatusCode``.

    >>> with TranslationClient("localhost:50051") as client:        # doctest: +SKIP
    ...     client.translate(["Hello!"], "en", "de")[0].text
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        timeout: float | None = 60.0,
        tls: bool = False,
        ca_cert: str | Path | bytes | None = None,
        client_cert: str | Path | bytes | None = None,
        client_key: str | Path | bytes | None = None,
        server_name: str | None = None,
        token: str | None = None,
        retries: int | None = None,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        load_balancing: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if retries is not None and retries < 0:
            raise ValueError(f"retries={retries} is out of range; allowed: >= 0 or None (no cap)")
        if retry_timeout < 0:
            raise ValueError(f"retry_timeout={retry_timeout} is out of range; allowed: >= 0 seconds")
        if backoff <= 0 or max_backoff < backoff:
            raise ValueError(f"backoff={backoff}, max_backoff={max_backoff}: need 0 < backoff <= max_backoff")
        self.timeout = timeout
        self.retries = retries
        self.retry_timeout = retry_timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = open_channel(
            target,
            tls=tls,
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            server_name=server_name,
            load_balancing=load_balancing,
            max_message_bytes=max_message_bytes,
            options=options,
        )
        self.stub = pb_grpc.TranslationServiceStub(self.channel)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> TranslationClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ calls
    def translate(
        self,
        texts: Sequence[str],
        source_language: str = "en",
        target_language: str = "de",
        *,
        model_id: str = "",
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int | None = None,
        return_scores: bool = False,
        timeout: float | None = None,
        text_format: str = "text",
        split_sentences: bool = True,
    ) -> list[Translation]:
        """Translate ``texts`` (results in input order). Options left as None take the server's
        defaults (beam 4, length penalty 1.0, one hypothesis). ``source_language="auto"`` detects each
        text's language (``Translation.detected_language``); ``text_format``: "text" or "html";
        ``split_sentences=False`` translates each text as one sentence."""
        request = _request(
            source_language,
            target_language,
            model_id,
            beam_size,
            max_length,
            length_penalty,
            num_hypotheses,
            return_scores,
            text_format,
            split_sentences,
        )
        request.texts.extend(_check_texts(texts))
        response = self._call(self.stub.Translate, request, timeout)
        return translations_from_proto(response, with_scores=return_scores)

    def translate_stream(
        self,
        texts: Iterable[str],
        source_language: str = "en",
        target_language: str = "de",
        *,
        model_id: str = "",
        batch_size: int = 32,
        max_in_flight: int = 8,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int | None = None,
        return_scores: bool = False,
        timeout: float | None = None,
        text_format: str = "text",
        split_sentences: bool = True,
    ) -> Iterator[Translation]:
        """Translate an iterable of any length over one ``TranslateStream`` call, ``batch_size``
        texts per message and at most ``max_in_flight`` batches unanswered; yields translations in
        input order while later batches are still running. ``texts`` is read lazily. If the stream
        breaks with UNAVAILABLE, unanswered batches are resent on a new stream (with backoff).
        ``timeout``: seconds the server may go without answering any batch while some are pending
        (None = no limit); a stall fails the job with DEADLINE_EXCEEDED."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is out of range; allowed: >= 1")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight} is out of range; allowed: >= 1")
        if isinstance(texts, str | bytes):
            raise TypeError("texts must be an iterable of strings, not a single string")
        template = _request(
            source_language,
            target_language,
            model_id,
            beam_size,
            max_length,
            length_penalty,
            num_hypotheses,
            return_scores,
            text_format,
            split_sentences,
        )
        job = StreamJob(
            self.stub.TranslateStream,
            template,
            iter(texts),
            batch_size=batch_size,
            max_in_flight=max_in_flight,
            metadata=self.metadata,
            timeout=timeout,
            delays=self._delays,
        )
        for response in job.run():
            yield from translations_from_proto(response, with_scores=return_scores)

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        response = self._call(self.stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    def detect(self, texts: Sequence[str], *, timeout: float | None = None) -> list[list[tuple[str, float]]]:
        """Per text, ``(language, confidence 0-1)`` candidates, best first (``[]``: no letters to go on)."""
        request = pb.DetectRequest(texts=_check_texts(texts))
        response = self._call(self.stub.Detect, request, timeout)
        return [[(s.language, s.confidence) for s in d.languages] for d in response.detections]

    # ------------------------------------------------------------------ retries
    def _delays(self) -> Iterator[float]:
        """Backoff before each retry: exponential with jitter, until ``retry_timeout`` seconds have
        passed since the first failure (or ``retries`` delays were given)."""
        start = time.monotonic()
        attempt = 0
        while self.retries is None or attempt < self.retries:
            delay = random.uniform(0.5, 1.0) * min(self.max_backoff, self.backoff * 2**attempt)
            if time.monotonic() - start + delay > self.retry_timeout:
                # The last one lands exactly at the budget's end, so a restart that takes nearly
                # ``retry_timeout`` seconds is still caught.
                delay = self.retry_timeout - (time.monotonic() - start)
                if delay <= 0:
                    return
            attempt += 1
            yield delay

    def _call(self, method: Callable[..., T], request: object, timeout: float | None) -> T:
        budget = self.timeout if timeout is None else timeout
        deadline = None if budget is None else time.monotonic() + budget
        delays = self._delays()
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return method(request, timeout=remaining, metadata=self.metadata)
            except grpc.RpcError as err:
                error = FerryError.from_rpc_error(err)
            # This blocking call never cancels itself, so CANCELLED can only come from a server that
            # stopped while the call was arriving (gRPC core reports that race as CANCELLED, not
            # UNAVAILABLE): as safe to retry as UNAVAILABLE.
            retry = error.retryable or error.code == grpc.StatusCode.CANCELLED
            delay = next(delays, None) if retry else None
            if delay is None or (deadline is not None and time.monotonic() + delay >= deadline):
                raise error
            time.sleep(delay)


def _request(
    source_language: str,
    target_language: str,
    model_id: str,
    beam_size: int | None,
    max_length: int | None,
    length_penalty: float | None,
    num_hypotheses: int | None,
    return_scores: bool,
    text_format: str = "text",
    split_sentences: bool = True,
) -> pb.TranslateRequest:
    """A request without texts: the routing and decoding options shared by unary and stream calls."""
    if text_format not in ("text", "html"):
        raise ValueError(f"text_format={text_format!r} is not supported; use text or html")
    return pb.TranslateRequest(
        source_language=source_language,
        target_language=target_language,
        model_id=model_id,
        format=pb.TEXT_FORMAT_HTML if text_format == "html" else pb.TEXT_FORMAT_UNSPECIFIED,
        no_sentence_split=not split_sentences,
        options=decoding_options(
            beam_size=beam_size,
            max_length=max_length,
            length_penalty=length_penalty,
            num_hypotheses=num_hypotheses,
            return_scores=return_scores,
        ),
    )
