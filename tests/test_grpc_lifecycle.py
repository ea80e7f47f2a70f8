"""Server lifecycle and transport behaviour against a scripted fake engine (deterministic, no model):
cancellation reaches the engine, drain (health NOT_SERVING, UNAVAILABLE for newcomers, accepted
calls finish), streams during a drain, client retries, round-robin over replicas, token auth, TLS."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import pytest
from ferry.client import FerryError, TranslationClient, probe
from ferry.client.health import ProbeResult
from ferry.model.translator import TranslationResult
from ferry.proto.v1 import translation_pb2 as pb
from ferry.proto.v1 import translation_pb2_grpc as pb_grpc
from ferry.server.app import SERVICE_NAME, ServerConfig, ServerThread
from ferry.server.engine import EngineStats
from ferry.server.registry import ModelRegistry, ServedModel
from ferry.server.requests import DecodeOptions, EngineClosedError, QueueFullError


class FakeHandle:
    def __init__(self, texts: list[str], options: DecodeOptions, deadline: float | None) -> None:
        self.texts = texts
        self.options = options
        self.deadline = deadline
        self.future: Future[list[TranslationResult]] = Future()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        self.future.cancel()

    def finish(self) -> None:
        """Answer with each text reversed word by word."""
        self.future.set_result([TranslationResult(text=" ".join(reversed(t.split()))) for t in self.texts])


class FakeEngine:
    """Answers at once (``hold=False``) or when the test calls ``finish`` on a handle."""

    max_input_tokens = 64

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.handles: list[FakeHandle] = []
        self.errors: list[Exception] = []
        """Raised by the next submits, one each."""
        self.submits = 0
        self.on_step: Callable[..., None] | None = None

    def submit(self, texts: list[str], options: DecodeOptions, *, deadline: float | None = None) -> FakeHandle:
        self.submits += 1
        if self.errors:
            raise self.errors.pop(0)
        handle = FakeHandle(list(texts), options, deadline)
        self.handles.append(handle)
        if not self.hold:
            handle.finish()
        return handle

    def wait_handles(self, n: int, timeout: float = 30.0) -> list[FakeHandle]:
        deadline = time.monotonic() + timeout
        while len(self.handles) < n:
            assert time.monotonic() < deadline, f"only {len(self.handles)} of {n} requests reached the engine"
            time.sleep(0.01)
        return self.handles

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def drain(self, timeout: float) -> bool:
        return True

    def stats(self) -> EngineStats:
        return EngineStats()


def fake_registry(engine: FakeEngine, version: str = "1") -> ModelRegistry:
    model = ServedModel(
        model_id="fake",
        version=version,
        source_language="xx",
        target_language="yy",
        engine=engine,  # type: ignore[arg-type]
        device="cpu",
        dtype="float32",
        max_input_tokens=64,
        max_length=64,
    )
    return ModelRegistry([model])


def start(engine: FakeEngine, **config: object) -> ServerThread:
    server = ServerThread(fake_registry(engine), ServerConfig(host="127.0.0.1", port=0, **config))  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def held() -> Iterator[tuple[FakeEngine, ServerThread]]:
    engine = FakeEngine(hold=True)
    server = start(engine)
    yield engine, server
    for h in engine.handles:
        if not h.future.done():
            h.finish()
    server.stop(drain_timeout=0)


def stub_for(port: int) -> tuple[grpc.Channel, pb_grpc.TranslationServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.TranslationServiceStub(channel)


def request(*texts: str, **fields: object) -> pb.TranslateRequest:
    return pb.TranslateRequest(texts=list(texts), source_language="xx", target_language="yy", **fields)  # type: ignore[arg-type]


def test_client_cancel_cancels_the_engine_request(held: tuple[FakeEngine, ServerThread]) -> None:
    engine, server = held
    channel, stub = stub_for(server.port)
    with channel:
        call = stub.Translate.future(request("red cat"))
        (handle,) = engine.wait_handles(1)
        call.cancel()
        assert handle.cancelled.wait(10), "the engine request was not cancelled"


def test_deadline_is_passed_on_and_expiry_cancels(held: tuple[FakeEngine, ServerThread]) -> None:
    engine, server = held
    with TranslationClient(f"127.0.0.1:{server.port}", retries=0) as client:
        with pytest.raises(FerryError) as err:
            client.translate(["red cat"], "xx", "yy", timeout=0.5)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    (handle,) = engine.handles
    assert handle.deadline is not None
    assert handle.cancelled.wait(10)


def test_stream_helper_times_out_when_nothing_is_answered(held: tuple[FakeEngine, ServerThread]) -> None:
    engine, server = held
    with TranslationClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(FerryError) as err:
            list(client.translate_stream(["a", "b", "c"], "xx", "yy", batch_size=1, timeout=0.5))
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no batch was answered for 0.5s" in err.value.message
    assert all(h.cancelled.wait(10) for h in engine.wait_handles(3))


def test_queue_full_is_resource_exhausted_and_not_retried() -> None:
    engine = FakeEngine()
    engine.errors = [QueueFullError("server busy: the queue holds at most 4 sentences")]
    server = start(engine)
    try:
        with TranslationClient(f"127.0.0.1:{server.port}", retries=3) as client:
            with pytest.raises(FerryError) as err:
                client.translate(["a b"], "xx", "yy")
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue" in err.value.message
            assert engine.submits == 1
            assert client.translate(["a b"], "xx", "yy")[0].text == "b a"
    finally:
        server.stop(drain_timeout=0)


def test_client_retries_unavailable_with_backoff() -> None:
    engine = FakeEngine()
    server = start(engine)
    try:
        with TranslationClient(f"127.0.0.1:{server.port}", retries=3, backoff=0.01) as client:
            engine.errors = [EngineClosedError("closed"), EngineClosedError("closed")]
            assert client.translate(["a b c"], "xx", "yy")[0].text == "c b a"
            assert engine.submits == 3
            engine.errors = [EngineClosedError("closed")] * 4
            with pytest.raises(FerryError) as err:
                client.translate(["a"], "xx", "yy")
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
            assert engine.submits == 3 + 4  # the first try and 3 retries
    finally:
        server.stop(drain_timeout=0)


def test_drain_health_not_serving_newcomers_unavailable_accepted_finish(
    held: tuple[FakeEngine, ServerThread],
) -> None:
    engine, server = held
    address = f"127.0.0.1:{server.port}"
    assert probe(address)[0] == ProbeResult.SERVING
    assert probe(address, SERVICE_NAME)[0] == ProbeResult.SERVING
    channel, stub = stub_for(server.port)
    with channel:
        accepted = stub.Translate.future(request("one two"), timeout=60)
        engine.wait_handles(1)
        server.begin_shutdown(drain_timeout=60)
        assert probe(address)[0] == ProbeResult.NOT_SERVING
        assert probe(address, SERVICE_NAME)[0] == ProbeResult.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Translate(request("late"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not accepted.done()
        engine.handles[0].finish()
        response = accepted.result(timeout=30)
    assert [t.text for t in response.translations] == ["two one"]
    assert server.stop() is True


def test_stream_during_drain_answers_accepted_batches_then_unavailable(
    held: tuple[FakeEngine, ServerThread],
) -> None:
    engine, server = held
    channel, stub = stub_for(server.port)
    sent = threading.Event()

    def requests() -> Iterator[pb.TranslateRequest]:
        yield request("a b", request_id="first")
        yield request("c d", request_id="second")
        sent.set()
        time.sleep(30)  # the client never half-closes: the drain must end the stream

    with channel:
        call = stub.TranslateStream(requests(), timeout=60)
        engine.wait_handles(2)
        server.begin_shutdown(drain_timeout=60)
        for h in reversed(engine.handles):  # finish out of order
            h.finish()
        got = {}
        with pytest.raises(grpc.RpcError) as err:
            for message in call:
                got[message.request_id] = [t.text for t in message.response.translations]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert got == {"first": ["b a"], "second": ["d c"]}
    assert server.stop() is True


def test_stream_reports_a_bad_batch_in_band_and_goes_on() -> None:
    engine = FakeEngine()
    server = start(engine)
    channel, stub = stub_for(server.port)
    try:
        with channel:
            messages = [
                request("a b"),
                request(),
                pb.TranslateRequest(texts=["x"], source_language="zz", target_language="yy"),
                request("c"),
            ]
            replies = {m.request_id: m for m in stub.TranslateStream(iter(messages), timeout=30)}
        assert set(replies) == {"0", "1", "2", "3"}
        assert [t.text for t in replies["0"].response.translations] == ["b a"]
        assert replies["1"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "texts is empty" in replies["1"].error.message
        assert "not served" in replies["2"].error.message
        assert [t.text for t in replies["3"].response.translations] == ["c"]
    finally:
        server.stop(drain_timeout=0)


def test_stream_helper_resends_unanswered_batches_after_unavailable() -> None:
    """A replica drains mid-job; the client's stream helper resumes on the other one."""
    first, second = FakeEngine(hold=True), FakeEngine()
    a, b = start(first), start(second)
    texts = [f"w{i} x{i}" for i in range(40)]
    try:
        addresses = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        # pick_first: the stream starts on the first replica; retries outlast its shutdown
        with TranslationClient(addresses, retries=8, backoff=0.1, max_backoff=1.0) as client:
            results: list[str] = []

            def consume() -> None:
                results.extend(r.text for r in client.translate_stream(texts, "xx", "yy", batch_size=4))

            worker = threading.Thread(target=consume)
            worker.start()
            handles = first.wait_handles(2)
            handles[0].finish()  # one batch answered by the first replica
            a.begin_shutdown(drain_timeout=30)
            for h in first.wait_handles(2):
                if not h.future.done():
                    h.finish()
            worker.join(60)
        assert not worker.is_alive()
        assert results == [f"x{i} w{i}" for i in range(40)]
    finally:
        a.stop(drain_timeout=0)
        b.stop(drain_timeout=0)


def test_round_robin_spreads_calls_over_replicas() -> None:
    engines = [FakeEngine(), FakeEngine()]
    servers = [start(e) for e in engines]
    try:
        target = ",".join(f"127.0.0.1:{s.port}" for s in servers)
        with TranslationClient(target, load_balancing="round_robin") as client:
            for _ in range(10):
                client.translate(["a"], "xx", "yy")
        counts = [e.submits for e in engines]
        assert sum(counts) == 10 and min(counts) >= 2, counts
    finally:
        for s in servers:
            s.stop(drain_timeout=0)


def test_bearer_token_auth() -> None:
    server = start(FakeEngine(), auth_token="s3cret")
    address = f"127.0.0.1:{server.port}"
    try:
        with TranslationClient(address, token="s3cret") as client:
            assert client.translate(["a b"], "xx", "yy")[0].text == "b a"
            assert [s for s, _ in [(r.text, 0) for r in client.translate_stream(["c d"], "xx", "yy")]] == ["d c"]
        for token in (None, "wrong"):
            with TranslationClient(address, token=token, retries=0) as client:
                with pytest.raises(FerryError) as err:
                    client.translate(["a"], "xx", "yy")
                assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(FerryError) as err:
                    list(client.translate_stream(["a"], "xx", "yy"))
                assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert probe(address)[0] == ProbeResult.SERVING  # health needs no token
    finally:
        server.stop(drain_timeout=0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    server = start(FakeEngine(), tls_cert=cert, tls_key=key)
    try:
        with TranslationClient(f"localhost:{server.port}", ca_cert=cert) as client:
            assert client.translate(["a b"], "xx", "yy")[0].text == "b a"
        assert probe(f"localhost:{server.port}", ca_cert=cert)[0] == ProbeResult.SERVING
        with TranslationClient(f"localhost:{server.port}", retries=0, timeout=5) as client:  # plaintext
            with pytest.raises(FerryError) as err:
                client.translate(["a"], "xx", "yy")
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(drain_timeout=0)
