"""One ``TranslateStream`` job: batches out, results back in order, resumable after UNAVAILABLE.

gRPC's blocking API reads the request iterator on its own thread, so batches are produced there
(lazily, at most ``max_in_flight`` unanswered) while the caller's thread reads responses. Every
batch stays in ``pending`` until its answer arrives; when a stream breaks with UNAVAILABLE (the
server draining or gone), a new stream first resends everything still pending. Nothing accepted
from the caller's iterable is lost or answered twice.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from ferry.proto.v1 import translation_pb2 as pb

from .errors import FerryError, status_code


@dataclass
class _Attempt:
    """One stream call's request side; ``stopped`` ends its generator."""

    window: threading.Semaphore
    stopped: bool = False


class StreamJob:
    def __init__(
        self,
        method: Callable[..., Any],
        template: pb.TranslateRequest,
        texts: Iterator[str],
        *,
        batch_size: int,
        max_in_flight: int,
        metadata: tuple[tuple[str, str], ...],
        timeout: float | None,
        delays: Callable[[], Iterator[float]],
    ) -> None:
        self.method = method
        self.template = template
        self.texts = texts
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.metadata = metadata
        self.timeout = timeout
        self.delays = delays
        self.lock = threading.Lock()
        self.pending: dict[int, list[str]] = {}  # batch index -> texts; sent (or taken), unanswered
        self.sent: set[int] = set()  # pending batches sent on the current stream
        self.last_progress = 0.0  # monotonic time of the latest answer (or first send after a lull)
        self.resend: list[int] = []
        self.next_index = 0
        self.exhausted = False
        self.source_error: BaseException | None = None

    # ------------------------------------------------------------------ request side (gRPC's thread)
    def _read_batch(self) -> list[str]:
        try:
            return list(itertools.islice(self.texts, self.batch_size))
        except BaseException as exc:  # surfaced to the caller by run()
            self.source_error = exc
            return []

    def _requests(self, attempt: _Attempt) -> Iterator[pb.TranslateRequest]:
        while True:
            attempt.window.acquire()
            with self.lock:
                if attempt.stopped:
                    return
                index = self.resend.pop(0) if self.resend else None
                batch = self.pending[index] if index is not None else []
            if index is None:
                if self.exhausted:
                    return
                batch = self._read_batch()
                if not batch:
                    self.exhausted = True
                    return
                with self.lock:
                    index = self.next_index
                    self.next_index += 1
                    self.pending[index] = batch
                    if attempt.stopped:  # read after the stream broke: the next attempt sends it
                        self.resend.append(index)
                        return
            request = pb.TranslateRequest()
            request.CopyFrom(self.template)
            request.texts.extend(batch)
            request.request_id = str(index)
            with self.lock:
                if not self.sent:
                    self.last_progress = time.monotonic()
                self.sent.add(index)
            yield request

    def _stop(self, attempt: _Attempt) -> None:
        with self.lock:
            attempt.stopped = True
        for _ in range(self.max_in_flight + 1):  # wake a generator blocked on the window
            attempt.window.release()

    def _watch(self, call: grpc.Future, finished: threading.Event, fired: threading.Event) -> None:
        """Cancel ``call`` once batches are pending and none was answered for ``timeout`` seconds."""
        assert self.timeout is not None
        while not finished.wait(min(0.25, self.timeout / 4)):
            with self.lock:
                stalled = bool(self.sent) and time.monotonic() - self.last_progress > self.timeout
            if stalled:
                fired.set()
                call.cancel()
                return

    # ------------------------------------------------------------------ response side (caller's thread)
    def run(self) -> Iterator[pb.TranslateResponse]:
        """Responses in batch order."""
        done: dict[int, pb.TranslateResponse] = {}
        next_out = 0
        delays = self.delays()
        while True:
            attempt = _Attempt(window=threading.Semaphore(self.max_in_flight))
            with self.lock:
                self.resend = sorted(self.pending)
                self.sent.clear()
            call = self.method(self._requests(attempt), metadata=self.metadata)
            finished, fired = threading.Event(), threading.Event()
            if self.timeout is not None:
                threading.Thread(target=self._watch, args=(call, finished, fired), daemon=True).start()
            failure: FerryError | None = None
            try:
                for message in call:
                    if message.HasField("error"):
                        error = FerryError(
                            status_code(message.error.code), message.error.message, request_id=message.request_id
                        )
                        if not error.retryable:
                            raise error
                        failure = error
                        break
                    index = int(message.request_id)
                    with self.lock:
                        self.pending.pop(index, None)
                        self.sent.discard(index)
                        self.last_progress = time.monotonic()
                    attempt.window.release()
                    done[index] = message.response
                    delays = self.delays()  # progress: a fresh retry budget
                    while next_out in done:
                        yield done.pop(next_out)
                        next_out += 1
            except grpc.RpcError as err:
                failure = FerryError.from_rpc_error(err)
                if fired.is_set():
                    raise FerryError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no batch was answered for {self.timeout}s (timeout) while {len(self.pending)} waited; "
                        "is the server overloaded? raise the timeout or send smaller batches",
                    ) from None
            finally:
                finished.set()
                self._stop(attempt)
                call.cancel()
            if failure is None:
                if self.source_error is not None:
                    raise self.source_error
                if self.pending or done:
                    raise FerryError(
                        grpc.StatusCode.INTERNAL,
                        f"the stream ended with {len(self.pending)} batches unanswered "
                        f"(first: request {min(self.pending or done)})",
                    )
                return
            # The job cancels its own call only after deciding (or through the watchdog, which
            # raised above), so CANCELLED here comes from a server that stopped while the call was
            # starting (gRPC core reports that race as CANCELLED): as safe to retry as UNAVAILABLE,
            # since every unanswered batch is resent and answers are matched by index.
            retryable = failure.retryable or failure.code == grpc.StatusCode.CANCELLED
            delay = next(delays, None) if retryable else None
            if delay is None:
                raise failure
            time.sleep(delay)
