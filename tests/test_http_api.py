"""The LibreTranslate-compatible HTTP API end to end: a real ``FerryServer`` (gRPC and HTTP on one
loop) with the tiny models; every endpoint, field and error status, auth, draining, backpressure,
client disconnects, metrics, and the ``libretranslatepy`` client from PyPI used unchanged."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from ferry.server.app import ServerThread
from ferry.server.engine import EngineConfig
from ferry.server.registry import ModelRegistry
from ferry.server.servicer import RequestLimits
from http_support import call, copy_model, serve_http

import ferry.text.detect

LIMITS = RequestLimits(max_texts=8, max_text_chars=200, max_message_bytes=16 * 1024)
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def reverse_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model registered as yy→xx, so the pair has a reverse."""
    return copy_model(
        tiny_checkpoint,
        tmp_path_factory.mktemp("rev") / "model",
        model_id="tiny-rev",
        source_language="yy",
        target_language="xx",
    )


@pytest.fixture(scope="module")
def pairs(tiny_pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Sources and their exact translations by the tiny xx→yy model."""
    return tiny_pairs[:8]


@pytest.fixture(scope="module")
def models(tiny_checkpoint: Path, reverse_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """xx→yy, its reverse yy→xx, and the same weights as zz→yy (two sources for one target)."""
    zz = copy_model(tiny_checkpoint, tmp_path_factory.mktemp("zz") / "model", model_id="tiny-zz", source_language="zz")
    return [tiny_checkpoint, reverse_checkpoint, zz]


@pytest.fixture(scope="module")
def server(models: list[Path]) -> Iterator[tuple[ServerThread, str]]:
    registry = ModelRegistry.load(models, device="cpu")
    with serve_http(registry, limits=LIMITS, metrics_port=free_port()) as served:
        yield served


@pytest.fixture(scope="module")
def base(server: tuple[ServerThread, str]) -> str:
    return server[1]


@pytest.fixture(scope="module")
def auth_base(tiny_checkpoint: Path) -> Iterator[str]:
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu")
    with serve_http(registry, limits=LIMITS, auth_token=TOKEN) as (_, url):
        yield url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_detector(table: dict[str, list[tuple[str, float]]]) -> Callable[..., list[list[tuple[str, float]]]]:
    """Detects by exact text, as ``ferry.text.detect.detect`` would answer."""

    def detect(texts: Sequence[str], **_: object) -> list[list[tuple[str, float]]]:
        return [table.get(t, []) for t in texts]

    return detect


# ---------------------------------------------------------------------------------------------- /translate
def test_translate_a_string_as_json(base: str, pairs: list[tuple[str, str]]) -> None:
    src, tgt = pairs[0]
    reply = call(f"{base}/translate", {"q": src, "source": "xx", "target": "yy"})
    assert (reply.status, reply.body) == (200, {"translatedText": tgt})
    assert reply.headers["content-type"] == "application/json"


def test_translate_a_list_keeps_order(base: str, pairs: list[tuple[str, str]]) -> None:
    pairs = pairs[:8]
    reply = call(f"{base}/translate", {"q": [s for s, _ in pairs], "source": "xx", "target": "yy"})
    assert (reply.status, reply.body) == (200, {"translatedText": [t for _, t in pairs]})


def test_translate_as_url_encoded_and_multipart_forms(base: str, pairs: list[tuple[str, str]]) -> None:
    src, tgt = pairs[1]
    reply = call(f"{base}/translate", form={"q": src, "source": "xx", "target": "yy", "format": "text"})
    assert (reply.status, reply.body) == (200, {"translatedText": tgt})
    boundary = "ferryboundary"
    parts = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in {"q": src, "source": "xx", "target": "yy"}.items()
    )
    reply = call(
        f"{base}/translate",
        raw=f"{parts}--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert (reply.status, reply.body) == (200, {"translatedText": tgt})


def test_repeated_form_q_is_a_list(base: str, pairs: list[tuple[str, str]]) -> None:
    pairs = pairs[:2]
    reply = call(f"{base}/translate", form={"q": [s for s, _ in pairs], "source": "xx", "target": "yy"})
    assert (reply.status, reply.body) == (200, {"translatedText": [t for _, t in pairs]})


def test_empty_and_blank_texts_translate_to_empty(base: str) -> None:
    reply = call(f"{base}/translate", {"q": ["", "  "], "source": "xx", "target": "yy"})
    assert reply.status == 200
    assert [t.strip() for t in reply.body["translatedText"]] == ["", ""]


def test_alternatives_are_the_n_best_after_the_best(base: str, pairs: list[tuple[str, str]]) -> None:
    src, tgt = pairs[2]
    reply = call(f"{base}/translate", {"q": src, "source": "xx", "target": "yy", "alternatives": 3})
    assert reply.status == 200
    assert reply.body["translatedText"] == tgt
    alternatives = reply.body["alternatives"]
    assert len(alternatives) == 3 and all(isinstance(a, str) and a != tgt for a in alternatives)
    batch = call(f"{base}/translate", form={"q": [src, src], "source": "xx", "target": "yy", "alternatives": "3"})
    assert batch.status == 200
    assert batch.body == {"translatedText": [tgt, tgt], "alternatives": [alternatives, alternatives]}


def test_html_format_is_accepted(base: str, pairs: list[tuple[str, str]]) -> None:
    src, _ = pairs[3]
    reply = call(f"{base}/translate", {"q": src, "source": "xx", "target": "yy", "format": "html"})
    assert reply.status == 200 and isinstance(reply.body["translatedText"], str)


def test_source_equal_to_target_is_an_unserved_pair(base: str) -> None:
    """As on gRPC (LibreTranslate itself would echo the text)."""
    reply = call(f"{base}/translate", {"q": "anything at all", "source": "yy", "target": "yy"})
    assert reply.status == 400 and reply.body["error"].startswith("language pair yy-yy is not served")


def test_query_string_fields(base: str, pairs: list[tuple[str, str]]) -> None:
    src, tgt = pairs[4]
    query = urllib.parse.urlencode({"q": src, "source": "xx", "target": "yy"})
    reply = call(f"{base}/translate?{query}", raw=b"", method="POST")
    assert (reply.status, reply.body) == (200, {"translatedText": tgt})


BAD_REQUESTS = [
    ({"source": "xx", "target": "yy"}, "q is missing"),
    ({"q": "red", "target": "yy"}, "source is missing"),
    ({"q": "red", "source": "xx"}, "target is missing"),
    ({"q": 5, "source": "xx", "target": "yy"}, "q must be a string or a list of strings"),
    ({"q": ["red", 3], "source": "xx", "target": "yy"}, "q[1] must be a string"),
    ({"q": "red", "source": ["xx"], "target": "yy"}, "source must be a string"),
    ({"q": "red", "source": "xx", "target": "yy", "format": "pdf"}, "format='pdf' is not supported"),
    ({"q": "red", "source": "xx", "target": "yy", "alternatives": -1}, "alternatives=-1 is out of range"),
    ({"q": "red", "source": "xx", "target": "yy", "alternatives": 99}, "alternatives=99 is out of range"),
    ({"q": "red", "source": "xx", "target": "yy", "alternatives": "two"}, "alternatives='two' is out of range"),
    ({"q": "red", "source": "xx", "target": "yy", "alternatives": True}, "alternatives=True is out of range"),
    ({"q": "red", "source": "xx", "target": "zz"}, "language pair xx-zz is not served"),
    ({"q": "red", "source": "fr", "target": "yy"}, "language pair fr-yy is not served"),
    ({"q": [], "source": "xx", "target": "yy"}, "q is an empty list"),
    ({"q": ["red"] * 9, "source": "xx", "target": "yy"}, "the limit is 8"),
    ({"q": "red " * 60, "source": "xx", "target": "yy"}, "the limit is 200"),
    ({"q": "a " * 99, "source": "xx", "target": "yy"}, "tokens (end-of-sentence token included); the limit is 64"),
]


@pytest.mark.parametrize(("body", "message"), BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
def test_bad_requests_are_400_naming_the_problem(base: str, body: dict, message: str) -> None:
    reply = call(f"{base}/translate", body)
    assert reply.status == 400, reply.body
    assert message in reply.body["error"], reply.body


def test_unknown_pair_lists_what_is_served(base: str) -> None:
    reply = call(f"{base}/translate", {"q": "red", "source": "xx", "target": "zz"})
    assert (
        "served: xx-yy (model_id 'tiny'), yy-xx (model_id 'tiny-rev'), zz-yy (model_id 'tiny-zz')"
        in reply.body["error"]
    )


@pytest.mark.parametrize(
    ("raw", "content_type", "message"),
    [
        (b"{not json", "application/json", "the body is not valid JSON"),
        (b'["red"]', "application/json", "the JSON body is a list"),
        (b"\xff\xfe", "application/json", "the body is not valid JSON"),
        (b"q=red", "application/xml", "unsupported Content-Type 'application/xml'"),
        (b"x" * (17 * 1024), "application/json", "the limit is 16384"),
        (b"--b\r\ngarbage", "multipart/form-data; boundary=b", ""),
        (b"[" * 8000 + b"]" * 8000, "application/json", "the body is not valid JSON"),
    ],
)
def test_unreadable_bodies_are_400(
    base: str, raw: bytes, content_type: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        reply = call(f"{base}/translate", raw=raw, headers={"Content-Type": content_type})
    assert reply.status == 400, reply.body
    assert message in reply.body["error"]
    assert not caplog.records, caplog.text  # a client's bad body is its problem, not the server log's


def test_chunked_body_over_the_limit_is_400(base: str) -> None:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 4096
        for _ in range(5):
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith("HTTP/1.1 400"), answer
    assert "the limit is 16384" in answer


def read_all(sock: socket.socket) -> str:
    """One whole HTTP response: headers, then Content-Length bytes of body (or until the server
    closes). Not "until close": whether the server keeps the connection alive depends on whether it
    had read the whole request body when it answered, a race that made this test flaky."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [
                line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= int(lengths[0]):
                return data.decode()
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode()
        data += chunk


def test_a_client_leaving_in_the_middle_of_its_body_logs_no_error(
    server: tuple[ServerThread, str], caplog: pytest.LogCaptureFixture
) -> None:
    thread, base = server
    assert thread.server is not None
    servicer = thread.server.servicer
    host, port = base.removeprefix("http://").split(":")
    with caplog.at_level("WARNING", logger="ferry"):
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b'Content-Length: 1000\r\n\r\n{"q": "red')
        wait_for(lambda: servicer.inflight == 1)  # reading the body
        sock.close()
        wait_for(lambda: servicer.inflight == 0)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


def test_malformed_http_logs_nothing(base: str, caplog: pytest.LogCaptureFixture) -> None:
    host, port = base.removeprefix("http://").split(":")
    with caplog.at_level("WARNING"):
        for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"):
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(garbage)
                assert sock.recv(1024).startswith(b"HTTP/1.1 ")
    assert not caplog.records, caplog.text


def test_file_uploads_are_refused(base: str) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="q"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\n'
        b"red\r\n--b--\r\n"
    )
    reply = call(f"{base}/translate", raw=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status == 400 and "q is a file upload" in reply.body["error"]


def test_unknown_paths_and_methods_are_json(base: str) -> None:
    reply = call(f"{base}/nope")
    assert (reply.status, reply.body) == (404, {"error": "no such endpoint: /nope"})
    reply = call(f"{base}/translate")
    assert (reply.status, reply.body) == (405, {"error": "GET is not allowed on /translate"})


# ---------------------------------------------------------------------------------------------- auto / detect
def test_auto_detects_each_text(base: str, pairs: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    (s0, t0), (s1, t1) = pairs[:2]
    table = {s0: [("zz", 0.5), ("xx", 0.3)], s1: [("xx", 0.875)]}
    monkeypatch.setattr(ferry.text.detect, "detect", fake_detector(table))
    reply = call(f"{base}/translate", {"q": s1, "source": "auto", "target": "yy"})
    assert (reply.status, reply.body) == (
        200,
        {"translatedText": t1, "detectedLanguage": {"language": "xx", "confidence": 87.5}},
    )
    # Per text, each with the model for its language (zz→yy and xx→yy), answers in input order.
    reply = call(f"{base}/translate", {"q": [s0, s1], "source": "auto", "target": "yy"})
    assert (reply.status, reply.body) == (
        200,
        {
            "translatedText": [t0, t1],
            "detectedLanguage": [{"language": "zz", "confidence": 50.0}, {"language": "xx", "confidence": 87.5}],
        },
    )


def test_auto_with_an_unserved_language_is_400(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"red": [("xx", 0.9)], "bonjour": [("fr", 0.9)]}
    monkeypatch.setattr(ferry.text.detect, "detect", fake_detector(table))
    reply = call(f"{base}/translate", {"q": ["red", "bonjour"], "source": "auto", "target": "yy"})
    assert reply.status == 400
    assert reply.body["error"].startswith("q[1] was detected as 'fr' (confidence 0.90) and no model translates fr-yy")
    reply = call(f"{base}/translate", {"q": "123", "source": "auto", "target": "yy"})
    assert reply.status == 400
    assert reply.body["error"].startswith("source is auto but no text has letters")


def test_detect_ranks_candidates(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    table = {"red cat": [("fr", 0.6), ("xx", 0.3), ("yy", 0.1)]}
    monkeypatch.setattr(ferry.text.detect, "detect", fake_detector(table))
    reply = call(f"{base}/detect", form={"q": "red cat"})
    assert (reply.status, reply.body) == (
        200,
        [
            {"language": "fr", "confidence": 60.0},
            {"language": "xx", "confidence": 30.0},
            {"language": "yy", "confidence": 10.0},
        ],
    )
    assert call(f"{base}/detect", {"q": "1234"}).body == []
    assert "q is missing" in call(f"{base}/detect", {}).body["error"]
    assert "q must be a string" in call(f"{base}/detect", {"q": ["a"]}).body["error"]
    too_long = call(f"{base}/detect", {"q": "a" * 201})
    assert too_long.status == 400 and "the limit is 200" in too_long.body["error"]


def test_detect_with_the_real_detector(base: str) -> None:
    reply = call(f"{base}/detect", {"q": "This is an English sentence about the weather."})
    assert reply.status == 200
    assert reply.body[0]["language"] == "en" and 50 < reply.body[0]["confidence"] <= 100


# ---------------------------------------------------------------------------------------------- other GETs
def test_languages_lists_hosted_pairs(base: str) -> None:
    reply = call(f"{base}/languages")
    assert (reply.status, reply.body) == (
        200,
        [
            {"code": "xx", "name": "xx", "targets": ["yy"]},
            {"code": "yy", "name": "yy", "targets": ["xx"]},
            {"code": "zz", "name": "zz", "targets": ["yy"]},
        ],
    )


def test_health_and_settings_and_openapi(base: str) -> None:
    assert call(f"{base}/health").body == {"status": "serving"}
    settings = call(f"{base}/frontend/settings").body
    assert settings["charLimit"] == 200 and settings["keyRequired"] is False
    openapi = call(f"{base}/openapi.json").body
    assert openapi["openapi"].startswith("3.") and set(openapi["paths"]) >= {"/translate", "/detect", "/languages"}


def test_the_page_and_its_files(base: str) -> None:
    page = call(f"{base}/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="q"', 'id="source"', 'id="target"', 'id="translate"', 'id="translation"', 'id="error"'):
        assert element in page.body
    assert "http" not in page.body.replace("http-equiv", "")  # nothing from another host
    for name, kind in (("page.js", "javascript"), ("page.css", "text/css")):
        reply = call(f"{base}/static/{name}")
        assert reply.status == 200 and kind in reply.headers["content-type"]


# ---------------------------------------------------------------------------------------------- auth
@pytest.mark.parametrize(
    ("fields", "headers"),
    [
        ({"api_key": TOKEN}, {}),
        ({}, {"Authorization": f"Bearer {TOKEN}"}),
        ({}, {"Authorization": f"bearer {TOKEN}"}),
        ({"api_key": "wrong"}, {"Authorization": f"BEARER {TOKEN}"}),
    ],
)
def test_auth_accepts_the_key_either_way(auth_base: str, pairs: list, fields: dict, headers: dict) -> None:
    src, tgt = pairs[0]
    reply = call(f"{auth_base}/translate", {"q": src, "source": "xx", "target": "yy", **fields}, headers=headers)
    assert (reply.status, reply.body) == (200, {"translatedText": tgt})
    reply = call(f"{auth_base}/translate", form={"q": src, "source": "xx", "target": "yy", **fields}, headers=headers)
    assert reply.status == 200


@pytest.mark.parametrize(
    ("fields", "headers", "message"),
    [
        ({}, {}, "this server requires an API key"),
        ({"api_key": "wrong"}, {}, "invalid API key"),
        ({}, {"Authorization": "Bearer wrong"}, "invalid API key"),
        ({}, {"Authorization": f"Basic {TOKEN}"}, "this server requires an API key"),
    ],
)
def test_auth_refuses_missing_or_wrong_keys(auth_base: str, fields: dict, headers: dict, message: str) -> None:
    for path in ("translate", "detect"):
        reply = call(f"{auth_base}/{path}", {"q": "red", "source": "xx", "target": "yy", **fields}, headers=headers)
        assert reply.status == 403
        assert message in reply.body["error"]


def test_auth_is_checked_before_the_fields(auth_base: str) -> None:
    reply = call(f"{auth_base}/translate", {"q": 5})
    assert reply.status == 403


def test_with_auth_languages_health_and_page_stay_open(auth_base: str) -> None:
    assert call(f"{auth_base}/languages").status == 200
    assert call(f"{auth_base}/health").status == 200
    assert call(f"{auth_base}/").status == 200
    assert call(f"{auth_base}/frontend/settings").body["keyRequired"] is True


# ---------------------------------------------------------------------------------------------- metrics
def test_http_calls_are_in_the_metrics(server: tuple[ServerThread, str], pairs: list) -> None:
    thread, base = server
    call(f"{base}/translate", {"q": pairs[0][0], "source": "xx", "target": "yy"})
    call(f"{base}/translate", {"q": "red", "source": "xx", "target": "zz"})
    assert thread.server is not None
    url = f"http://127.0.0.1:{thread.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'ferry_requests_total{code="OK",method="http_translate"}' in text
    assert 'ferry_requests_total{code="INVALID_ARGUMENT",method="http_translate"}' in text


# ---------------------------------------------------------------------------------------------- load and lifecycle
def paused(registry: ModelRegistry) -> tuple[object, object]:
    """Keep the engine's worker from starting; returns the engine and its real ``start``."""
    engine = next(iter(registry)).engine
    real_start = engine.start
    engine.start = lambda: None  # type: ignore[method-assign]
    return engine, real_start


def test_queue_full_is_429_and_a_disconnect_cancels(tiny_checkpoint: Path, pairs: list) -> None:
    """With the worker paused, a request waits in the queue of 4 sentences: the next one gets 429;
    closing the waiting request's connection cancels it in the engine."""
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu", config=EngineConfig(max_queue_sentences=4))
    engine, real_start = paused(registry)
    with serve_http(registry) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"q": [s for s, _ in pairs[:4]], "source": "xx", "target": "yy"}).encode()
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(
            f"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(lambda: engine.stats().queue_sentences == 4)  # type: ignore[attr-defined]
        reply = call(f"{url}/translate", {"q": "red", "source": "xx", "target": "yy"})
        assert reply.status == 429
        assert "max_queue_sentences" in reply.body["error"]
        assert reply.headers.get("retry-after") == "1"
        sock.close()
        wait_for(lambda: engine.stats().inflight_requests == 0)  # type: ignore[attr-defined]
        real_start()  # type: ignore[operator]
        src, tgt = pairs[0]
        assert call(f"{url}/translate", {"q": src, "source": "xx", "target": "yy"}).body == {"translatedText": tgt}


def test_draining_is_503_and_accepted_requests_finish(tiny_checkpoint: Path, pairs: list) -> None:
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu")
    engine, real_start = paused(registry)
    with serve_http(registry, drain_timeout=30) as (thread, url):
        pairs = pairs[:3]
        answers: list = []
        waiting = threading.Thread(
            target=lambda: answers.append(
                call(f"{url}/translate", {"q": [s for s, _ in pairs], "source": "xx", "target": "yy"})
            )
        )
        waiting.start()
        wait_for(lambda: engine.stats().queue_sentences == 3)  # type: ignore[attr-defined]
        thread.begin_shutdown()
        health = call(f"{url}/health")
        assert (health.status, health.body) == (503, {"status": "draining"})
        refused = call(f"{url}/translate", {"q": "red", "source": "xx", "target": "yy"})
        assert refused.status == 503 and "shutting down" in refused.body["error"]
        assert refused.headers.get("retry-after") == "1"
        real_start()  # type: ignore[operator]
        waiting.join(60)
        assert answers[0].status == 200
        assert answers[0].body == {"translatedText": [t for _, t in pairs]}


def wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_https_with_the_grpc_certificate(tiny_checkpoint: Path, pairs: list, tmp_path: Path) -> None:
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
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu")
    with serve_http(registry, tls_cert=cert, tls_key=key) as (_, url):
        assert url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        src, tgt = pairs[0]
        reply = call(f"{url}/translate", {"q": src, "source": "xx", "target": "yy"}, context=trusted)
        assert (reply.status, reply.body) == (200, {"translatedText": tgt})
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext HTTP on that port
            urllib.request.urlopen(url.replace("https://", "http://") + "/health", timeout=10).read()


# ---------------------------------------------------------------------------------------------- a real client
def test_libretranslatepy_client_works_unchanged(base: str, auth_base: str, pairs: list, monkeypatch) -> None:
    libre = pytest.importorskip("libretranslatepy")
    src, tgt = pairs[5]
    client = libre.LibreTranslateAPI(base)
    assert client.translate(src, "xx", "yy") == tgt
    assert client.languages() == call(f"{base}/languages").body
    monkeypatch.setattr(ferry.text.detect, "detect", fake_detector({src: [("xx", 0.75)]}))
    assert client.detect(src) == [{"language": "xx", "confidence": 75.0}]
    assert libre.LibreTranslateAPI(auth_base, api_key=TOKEN).translate(src, "xx", "yy") == tgt
    with pytest.raises(urllib.error.HTTPError) as err:
        libre.LibreTranslateAPI(auth_base, api_key="wrong").translate(src, "xx", "yy")
    assert err.value.code == 403
