"""Regression tests of issue 13 (hostile or careless clients) against a scripted fake engine: stream
flow control tied to responses sent, undecodable bodies, auth before parsing, metrics under the real
status codes, quiet logs for cancelled and expired streams, client retries across a restart."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from ferry.client import FerryError, TranslationClient
from ferry.proto.v1 import translation_pb2 as pb
from ferry.server.app import ServerConfig, ServerThread
from ferry.server.servicer import RequestLimits
from ferry.server.wire import UndecodableReports
from test_grpc_lifecycle import FakeEngine, fake_registry, request

TRANSLATE = "/ferry.v1.TranslationService/Translate"
STREAM = "/ferry.v1.TranslationService/TranslateStream"
UNDECODABLE = b"\x0a\xff\x01"  # field 1 (texts), length 255, then one byte: truncated


def serve(engine: FakeEngine, **config: object) -> ServerThread:
    settings: dict[str, object] = {"host": "127.0.0.1", "port": 0, **config}
    server = ServerThread(fake_registry(engine), ServerConfig(**settings))  # type: ignore[arg-type]
    server.start()
    return server


def sample(server: ServerThread, name: str, **labels: str) -> float:
    assert server.server is not None
    value = server.server.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def settle(read: object, *, quiet_s: float = 1.0, limit_s: float = 30.0) -> int:
    """Poll ``read()`` until it stops changing for ``quiet_s`` seconds; returns the value."""
    assert callable(read)
    value, since, deadline = read(), time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return int(value)


def raw_stream(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)


# ---------------------------------------------------------------------- item 2: stream flow control
def test_a_stream_that_is_not_read_stops_the_server_reading() -> None:
    """A client that sends batches but never reads: the server stops reading (and working) once
    its un-sent responses fill the window; far fewer batches than sent reach the engine."""
    engine = FakeEngine()  # answers at once
    limits = RequestLimits(max_text_chars=100_000, stream_window=4, stream_unsent_bytes=64 * 1024)
    server = serve(engine, limits=limits)
    text = "w " * 10_000  # 20 kB in, 20 kB out per batch
    sent = 800
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        call = channel.stream_stream(STREAM)(
            (request(text, request_id=str(i)).SerializeToString() for i in range(sent)), timeout=60
        )
        worked = settle(lambda: engine.submits)
        # Bounded by the window plus what the transports buffer (HTTP/2 windows), not by what was sent.
        assert 4 <= worked < sent // 2, worked
        call.cancel()
    finally:
        channel.close()
        server.stop(drain_timeout=0)


def test_a_stream_keeps_at_most_window_batches_and_cancel_frees_them() -> None:
    engine = FakeEngine(hold=True)
    server = serve(engine, limits=RequestLimits(stream_window=3))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        call = channel.stream_stream(STREAM, request_serializer=pb.TranslateRequest.SerializeToString)(
            iter([request(f"a {i}") for i in range(20)]), timeout=60
        )
        assert settle(lambda: engine.submits) == 3  # no response was taken: nothing more is read
        call.cancel()
        for handle in engine.handles:
            assert handle.cancelled.wait(10), "a batch of a cancelled stream kept running"
        assert settle(lambda: sample(server, "ferry_requests_total", method="TranslateStream", code="CANCELLED")) == 1
    finally:
        channel.close()
        server.stop(drain_timeout=0)


def test_a_slow_reader_gets_every_response_in_the_end() -> None:
    engine = FakeEngine()
    server = serve(engine, limits=RequestLimits(stream_window=2))
    try:
        with TranslationClient(f"127.0.0.1:{server.port}", retries=0) as client:
            texts = [f"x {i}" for i in range(50)]
            got = [t.text for t in client.translate_stream(texts, "xx", "yy", batch_size=1, max_in_flight=8)]
        assert got == [f"{i} x" for i in range(50)]
        assert sample(server, "ferry_stream_batches_total", code="OK") == 50
    finally:
        server.stop(drain_timeout=0)


# ---------------------------------------------------------------------- items 4, 5: undecodable bodies
def test_undecodable_message_mid_stream_ends_the_call_with_invalid_argument() -> None:
    engine = FakeEngine()
    server = serve(engine)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    release = threading.Event()

    def messages() -> Iterator[bytes]:
        yield request("a b", request_id="0").SerializeToString()
        yield UNDECODABLE
        release.wait(60)  # keep the client side open: the server must end the call by itself

    try:
        call = raw_stream(channel)(messages(), timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ferry.v1.TranslateRequest" in err.value.details()
        assert sample(server, "ferry_requests_total", method="TranslateStream", code="INVALID_ARGUMENT") == 1
        assert sample(server, "ferry_undecodable_messages_total", method="TranslateStream") == 1
    finally:
        release.set()
        channel.close()
        server.stop(drain_timeout=0)


def test_undecodable_body_is_invalid_argument_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    server = serve(FakeEngine())
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    translate = channel.unary_unary(TRANSLATE, request_serializer=None, response_deserializer=None)
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as err:
                    translate(UNDECODABLE, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert err.value.details() == (
                    "the request message (3 bytes) is not a valid ferry.v1.TranslateRequest; "
                    "send messages built from the ferry.v1 protos"
                )
        loud = [r for r in caplog.records if r.levelno >= logging.INFO]
        assert [r.levelname for r in loud] == ["WARNING"], [r.getMessage() for r in loud]
        assert "refused 1 undecodable request message(s)" in loud[0].getMessage()
        assert all(r.exc_info is None for r in caplog.records)
        assert sample(server, "ferry_requests_total", method="Translate", code="INVALID_ARGUMENT") == 3
        assert sample(server, "ferry_undecodable_messages_total", method="Translate") == 3
    finally:
        channel.close()
        server.stop(drain_timeout=0)


def test_undecodable_reports_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    reports = UndecodableReports(interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="ferry.server"):
        for t in (0.0, 1.0, 2.0, 59.0, 61.0, 62.0):
            now[0] = t
            reports.report("Translate", "DecodeError: truncated")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("refused 1 undecodable") and warnings[1].startswith("refused 4 undecodable")


def test_auth_is_checked_before_the_body_is_parsed(caplog: pytest.LogCaptureFixture) -> None:
    server = serve(FakeEngine(), auth_token="s3cret")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    translate = channel.unary_unary(TRANSLATE, request_serializer=None, response_deserializer=None)
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(grpc.RpcError) as err:
                translate(UNDECODABLE, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                list(raw_stream(channel)(iter([UNDECODABLE]), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:  # authenticated: now the body is parsed
                translate(UNDECODABLE, timeout=10, metadata=(("authorization", "Bearer s3cret"),))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sample(server, "ferry_undecodable_messages_total", method="Translate") == 1
        assert sample(server, "ferry_undecodable_messages_total", method="TranslateStream") == 0
        assert sample(server, "ferry_requests_total", method="Translate", code="UNAUTHENTICATED") == 1
        assert sample(server, "ferry_requests_total", method="TranslateStream", code="UNAUTHENTICATED") == 1
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    finally:
        channel.close()
        server.stop(drain_timeout=0)


# ---------------------------------------------------------------------- item 10: bearer scheme
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    server = serve(FakeEngine(), auth_token="s3cret")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    translate = channel.unary_unary(
        TRANSLATE,
        request_serializer=pb.TranslateRequest.SerializeToString,
        response_deserializer=pb.TranslateResponse.FromString,
    )
    try:
        reply = translate(request("a b"), timeout=10, metadata=(("authorization", f"{scheme} s3cret"),))
        assert reply.translations[0].text == "b a"
        for wrong in (f"{scheme} s3cre", "Basic s3cret", "s3cret"):
            with pytest.raises(grpc.RpcError) as err:
                translate(request("a"), timeout=10, metadata=(("authorization", wrong),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
        server.stop(drain_timeout=0)


# ---------------------------------------------------------------------- items 7, 8: metrics and logs
def test_deadline_and_cancel_are_counted_apart_and_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(hold=True)
    server = serve(engine)
    address = f"127.0.0.1:{server.port}"
    channel = grpc.insecure_channel(address)
    stream = channel.stream_stream(STREAM, request_serializer=pb.TranslateRequest.SerializeToString)
    translate = channel.unary_unary(TRANSLATE, request_serializer=pb.TranslateRequest.SerializeToString)
    open_side = threading.Event()

    def idle_after_one() -> Iterator[pb.TranslateRequest]:
        yield request("a b", request_id="0")
        open_side.wait(60)  # the server waits for the next message when the deadline passes

    try:
        with caplog.at_level(logging.DEBUG):
            # A stream whose deadline passes while the server waits for its next message.
            with pytest.raises(grpc.RpcError) as err:
                list(stream(iter_then_wait(open_side), timeout=0.5))
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # A stream with a batch running, cancelled by the client.
            call = stream(idle_after_one(), timeout=60)
            engine.wait_handles(1)
            call.cancel()
            # A unary call whose deadline passes in the engine, and one the client cancels.
            with pytest.raises(grpc.RpcError) as err:
                translate(request("c d"), timeout=0.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            future = translate.future(request("e f"), timeout=60)
            engine.wait_handles(3)
            future.cancel()
            for handle in engine.handles:
                assert handle.cancelled.wait(10)

            def calls(method: str, code: str) -> int:
                return settle(lambda: sample(server, "ferry_requests_total", method=method, code=code))

            assert calls("Translate", "CANCELLED") == 1 and calls("TranslateStream", "CANCELLED") == 1
            assert calls("Translate", "DEADLINE_EXCEEDED") == 1 and calls("TranslateStream", "DEADLINE_EXCEEDED") == 1
            open_side.set()
            server.run(collect())  # unreferenced tasks are finalized (and would complain) now
        loud = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records if r.levelno > logging.DEBUG]
        assert loud == [], loud
    finally:
        open_side.set()
        channel.close()
        server.stop(drain_timeout=0)


def iter_then_wait(event: threading.Event) -> Iterator[pb.TranslateRequest]:
    event.wait(60)
    return
    yield  # a generator that sends nothing and keeps its side open


async def collect() -> None:
    gc.collect()


# ---------------------------------------------------------------------- item 11: client retries
def test_client_default_retries_ride_out_a_restart() -> None:
    engine = FakeEngine()
    server = serve(engine)
    port = server.port
    server.stop(drain_timeout=0)
    replacement: list[ServerThread] = []

    def restart() -> None:
        time.sleep(2.0)  # longer than the old default retry budget (~0.9 s)
        replacement.append(serve(engine, port=port))

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        with TranslationClient(f"127.0.0.1:{port}") as client:
            assert client.translate(["a b"], "xx", "yy")[0].text == "b a"
    finally:
        thread.join()
        for s in replacement:
            s.stop(drain_timeout=0)


def test_client_retry_budget_is_at_least_five_seconds_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import ferry.client.client as module

    clock = [0.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    client = TranslationClient("127.0.0.1:1")
    try:
        total = 0.0
        for delay in client._delays():
            assert 0 < delay <= client.max_backoff
            total += delay
            clock[0] += delay
        assert total >= 5.0 and total == pytest.approx(client.retry_timeout)
        client.retry_timeout = 1.0
        assert sum(_advance(client._delays(), clock)) == pytest.approx(1.0)
        client.retries = 0
        assert list(client._delays()) == []
    finally:
        client.close()
    with pytest.raises(ValueError, match="retry_timeout=-1"):
        TranslationClient("127.0.0.1:1", retry_timeout=-1)


def _advance(delays: Iterator[float], clock: list[float]) -> Iterator[float]:
    for delay in delays:
        clock[0] += delay
        yield delay


def test_unavailable_is_still_an_error_after_the_budget() -> None:
    with TranslationClient("127.0.0.1:1", retry_timeout=0.3, timeout=30) as client:
        with pytest.raises(FerryError) as err:
            client.translate(["a"], "xx", "yy")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_stream_job_resends_after_a_server_side_cancel() -> None:
    """A server that stops while a stream starts is reported by gRPC as CANCELLED: the stream
    helper resends its batches on a new call, as after UNAVAILABLE (the soak test hit this)."""
    from concurrent import futures

    calls = [0]

    def translate_stream(requests: Iterator[pb.TranslateRequest], context: grpc.ServicerContext) -> Iterator[object]:
        calls[0] += 1
        if calls[0] == 1:
            context.abort(grpc.StatusCode.CANCELLED, "server stopping")
        for r in requests:
            texts = [" ".join(reversed(t.split())) for t in r.texts]
            response = pb.TranslateResponse(request_id=r.request_id)
            for text in texts:
                response.translations.add(text=text)
            yield pb.TranslateStreamResponse(request_id=r.request_id, response=response)

    handler = grpc.method_handlers_generic_handler(
        "ferry.v1.TranslationService",
        {
            "TranslateStream": grpc.stream_stream_rpc_method_handler(
                translate_stream,
                request_deserializer=pb.TranslateRequest.FromString,
                response_serializer=pb.TranslateStreamResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with TranslationClient(f"127.0.0.1:{port}", backoff=0.01) as client:
            texts = [f"a {i}" for i in range(10)]
            assert [t.text for t in client.translate_stream(texts, "xx", "yy", batch_size=3)] == [
                f"{i} a" for i in range(10)
            ]
        assert calls[0] == 2
    finally:
        server.stop(0)
