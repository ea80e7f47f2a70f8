"""The gRPC API end to end with the real engines (two per model) and the tiny model, on one in-process server:
results equal the in-process Translator's, order kept, several models routed, every bad input gets
its status code, deadlines, cancellation, backpressure, metrics, health and reflection."""

from __future__ import annotations

import json
import math
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from ferry.client import FerryError, TranslationClient
from ferry.model.translator import Translator
from ferry.proto.v1 import translation_pb2 as pb
from ferry.proto.v1 import translation_pb2_grpc as pb_grpc
from ferry.server.app import HEALTH_SERVICE_NAME, SERVICE_NAME, ServerConfig, ServerThread
from ferry.server.engine import EngineConfig
from ferry.server.registry import ModelRegistry
from ferry.server.servicer import RequestLimits
from grpc_health.v1 import health_pb2, health_pb2_grpc

LIMITS = RequestLimits(max_texts=16, max_text_chars=1000, max_message_bytes=64 * 1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def second_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model again, registered as a zz→yy model with its own id and version."""
    path = tmp_path_factory.mktemp("second") / "model"
    shutil.copytree(tiny_checkpoint, path)
    meta = json.loads((path / "config.json").read_text())
    meta.update(model_id="tiny-zz", source_language="zz", version="2")
    (path / "config.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, second_checkpoint: Path) -> Iterator[ServerThread]:
    # Two engines per model, as `ferry serve` runs on a 2-core CPU (EnginePool): every test below goes
    # through the pool.
    registry = ModelRegistry.load([tiny_checkpoint, second_checkpoint], device="cpu", engines=2, threads=2)
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=free_port(), limits=LIMITS)
    with ServerThread(registry, config) as thread:
        yield thread


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[TranslationClient]:
    with TranslationClient(f"127.0.0.1:{server.port}", retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def translator(tiny_checkpoint: Path) -> Translator:
    return Translator(tiny_checkpoint, "cpu")


def test_round_trip_keeps_order(client: TranslationClient, tiny_pairs: list[tuple[str, str]]) -> None:
    pairs = tiny_pairs[:16]
    results = client.translate([s for s, _ in pairs], "xx", "yy")
    assert [r.text for r in results] == [t for _, t in pairs]
    assert {(r.model_id, r.model_version) for r in results} == {("tiny", "test")}
    assert all(r.score is None and r.output_tokens == len(t.split()) for r, (_, t) in zip(results, pairs))


@pytest.mark.parametrize("beam_size", [1, 4])
def test_same_tokens_and_scores_as_the_translator(
    client: TranslationClient, translator: Translator, tiny_pairs: list[tuple[str, str]], beam_size: int
) -> None:
    sources = [s for s, _ in tiny_pairs[16:32]]
    want = translator.translate_batch(sources, beam_size=beam_size, return_scores=True)
    got = client.translate(sources, "xx", "yy", beam_size=beam_size, return_scores=True)
    assert [r.text for r in got] == [r.text for r in want]
    assert [(r.input_tokens, r.output_tokens) for r in got] == [(r.input_tokens, r.output_tokens) for r in want]
    assert [r.score for r in got] == pytest.approx([r.score for r in want], rel=1e-4, abs=1e-5)


def test_n_best_and_empty_strings(client: TranslationClient, translator: Translator, tiny_pairs: list) -> None:
    source = tiny_pairs[0][0]
    want = translator.translate_batch([source], beam_size=4, num_hypotheses=3, return_scores=True)[0]
    got = client.translate(["", source, "   "], "xx", "yy", beam_size=4, num_hypotheses=3, return_scores=True)
    assert [r.text for r in got] == ["", want.text, ""]
    assert got[1].hypotheses == want.hypotheses
    assert got[1].scores == pytest.approx(want.scores, rel=1e-4, abs=1e-5)
    assert got[0].output_tokens == 0


def test_stream_keeps_order_over_many_batches(client: TranslationClient, tiny_pairs: list) -> None:
    sources = [s for s, _ in tiny_pairs] * 2
    results = list(client.translate_stream(iter(sources), "xx", "yy", batch_size=7, max_in_flight=3, beam_size=2))
    assert [r.text for r in results] == [t for _, t in tiny_pairs] * 2


def test_several_models_routed_by_pair_or_id(client: TranslationClient, tiny_pairs: list) -> None:
    models = {m.model_id: m for m in client.list_models()}
    assert set(models) == {"tiny", "tiny-zz"}
    assert (models["tiny-zz"].source_language, models["tiny-zz"].version) == ("zz", "2")
    assert models["tiny"].limits.max_texts == 16 and models["tiny"].limits.max_input_tokens == 64
    source, target = tiny_pairs[0]
    (by_pair,) = client.translate([source], "zz", "yy")
    assert (by_pair.text, by_pair.model_id, by_pair.model_version) == (target, "tiny-zz", "2")
    (by_id,) = client.translate([source], "", "", model_id="tiny")
    assert (by_id.text, by_id.model_id) == (target, "tiny")
    with pytest.raises(FerryError) as err:
        client.translate([source], "xx", "yy", model_id="tiny-zz")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "translates zz-yy" in err.value.message


def test_32_concurrent_clients_get_the_translators_tokens(
    server: ServerThread, translator: Translator, tiny_pairs: list[tuple[str, str]]
) -> None:
    sources = [s for s, _ in tiny_pairs]
    expected = {s: (r.text, r.output_tokens) for s, r in zip(sources, translator.translate_batch(sources))}
    failures: list[str] = []
    lock = threading.Lock()

    def one_client(k: int) -> None:
        with TranslationClient(f"127.0.0.1:{server.port}", retries=0, timeout=120) as c:
            for j in range(3):
                source = sources[(3 * k + j) % len(sources)]
                try:
                    (r,) = c.translate([source], "xx", "yy")
                    ok = (r.text, r.output_tokens) == expected[source]
                except FerryError as exc:
                    ok, r = False, exc  # type: ignore[assignment]
                if not ok:
                    with lock:
                        failures.append(f"{source!r}: {r}")

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:5]


LONG_CHARS = "red " * 300  # 1200 characters
LONG_TOKENS = "red " * 100  # 400 characters, 101 tokens > 64


@pytest.mark.parametrize(
    ("texts", "fields", "code", "needle"),
    [
        ([], {}, "INVALID_ARGUMENT", "texts is empty"),
        (["a"] * 17, {}, "INVALID_ARGUMENT", "texts has 17 entries; the limit is 16"),
        (["blue", LONG_CHARS], {}, "INVALID_ARGUMENT", "texts[1] has 1200 characters; the limit is 1000"),
        (["blue", LONG_TOKENS], {}, "INVALID_ARGUMENT", "texts[1] has 101 tokens"),
        (["blue"], {"source_language": "en"}, "INVALID_ARGUMENT", "en-yy is not served; served: xx-yy"),
        (["blue"], {"source_language": ""}, "INVALID_ARGUMENT", "source_language is empty"),
        (["blue"], {"model_id": "nope"}, "INVALID_ARGUMENT", "model_id 'nope' is not served"),
        (["blue"], {"beam_size": 0}, "INVALID_ARGUMENT", "options.beam_size=0 is out of range"),
        (["blue"], {"beam_size": 33}, "INVALID_ARGUMENT", "beam_size <= 32"),
        (["blue"], {"max_length": 0}, "INVALID_ARGUMENT", "options.max_length=0"),
        (["blue"], {"max_length": 65}, "INVALID_ARGUMENT", "max_length <= 64"),
        (["blue"], {"length_penalty": -1.0}, "INVALID_ARGUMENT", "options.length_penalty"),
        (["blue"], {"length_penalty": math.nan}, "INVALID_ARGUMENT", "options.length_penalty"),
        (["blue"], {"beam_size": 2, "num_hypotheses": 3}, "INVALID_ARGUMENT", "num_hypotheses <= 2"),
        (["x" * 100_000], {}, "RESOURCE_EXHAUSTED", ""),
    ],
)
def test_bad_input_gets_its_status(
    client: TranslationClient, texts: list, fields: dict, code: str, needle: str
) -> None:
    kwargs = {"source_language": "xx", "target_language": "yy", **fields}
    with pytest.raises(FerryError) as err:
        client.translate(texts, **kwargs)
    assert err.value.code == getattr(grpc.StatusCode, code)
    assert needle in err.value.message


def test_deadline_exceeded_and_server_keeps_serving(client: TranslationClient, tiny_pairs: list) -> None:
    sources = [s for s, _ in tiny_pairs[:16]]
    with pytest.raises(FerryError) as err:
        client.translate(sources, "xx", "yy", beam_size=8, timeout=0.001)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.translate(sources[:1], "xx", "yy")[0].text == tiny_pairs[0][1]


def test_cancelled_call_leaves_the_engine(server: ServerThread, tiny_pairs: list) -> None:
    assert server.server is not None
    engine = next(iter(server.server.registry)).engine
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.TranslationServiceStub(channel)
        request = pb.TranslateRequest(texts=[s for s, _ in tiny_pairs[:16]], source_language="xx", target_language="yy")
        request.options.beam_size = 16
        call = stub.Translate.future(request)
        call.cancel()
    deadline = time.monotonic() + 30
    while engine.stats().inflight_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats().inflight_requests == 0


def test_queue_full_is_resource_exhausted_at_once(tiny_checkpoint: Path, tiny_pairs: list) -> None:
    """A paused engine (worker not started) holds the first request in its queue of 4 sentences."""
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu", config=EngineConfig(max_queue_sentences=4))
    engine = next(iter(registry)).engine
    real_start = engine.start
    engine.start = lambda: None  # type: ignore[method-assign]
    sources = [s for s, _ in tiny_pairs[:4]]
    with ServerThread(registry) as server, TranslationClient(f"127.0.0.1:{server.port}", retries=0) as c:
        results: list = []
        waiting = threading.Thread(target=lambda: results.extend(c.translate(sources, "xx", "yy")))
        waiting.start()
        deadline = time.monotonic() + 30
        while engine.stats().queue_sentences < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(FerryError) as err:
            c.translate(["red"], "xx", "yy")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue_sentences" in err.value.message
        real_start()
        waiting.join(60)
        assert [r.text for r in results] == [t for _, t in tiny_pairs[:4]]


def test_metrics_endpoint(server: ServerThread, client: TranslationClient) -> None:
    with pytest.raises(FerryError):
        client.translate([], "xx", "yy")
    client.translate(["red cat"], "xx", "yy")
    assert server.server is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert 'ferry_requests_total{code="INVALID_ARGUMENT",method="Translate"}' in text
    assert 'ferry_requests_total{code="OK",method="Translate"}' in text
    assert "ferry_request_latency_seconds_bucket" in text
    for name in ("ferry_batch_rows_count", "ferry_batch_tokens_sum", "ferry_queue_sentences", "ferry_cache_bytes"):
        assert f'{name}{{model="tiny"}}' in text, name
    assert 'ferry_output_tokens_per_second{model="tiny"}' in text


def test_health_and_reflection(server: ServerThread) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {SERVICE_NAME, HEALTH_SERVICE_NAME} <= services
