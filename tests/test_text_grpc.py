"""gRPC side of ferry.text: format/no_sentence_split mapped onto the text stage, source_language "auto"
routed to the model of the detected language, detection fields, the Detect RPC and their errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from ferry.client import TranslationClient
from ferry.proto.v1 import translation_pb2 as pb
from ferry.proto.v1 import translation_pb2_grpc as pb_grpc
from ferry.server.app import ServerConfig, ServerThread
from ferry.server.registry import ModelRegistry

EN = "A man in a red shirt is riding a bike."
DE = "Ein Mann in einem roten Hemd fährt Fahrrad."
FR = "Un homme en chemise rouge fait du vélo."


def _copy(tiny: Path, root: Path, source: str) -> Path:
    """The tiny model registered as a ``source``→yy model."""
    path = root / f"tiny-{source}"
    shutil.copytree(tiny, path)
    meta = json.loads((path / "config.json").read_text())
    meta.update(model_id=f"tiny-{source}", source_language=source, target_language="yy")
    (path / "config.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def address(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("text-grpc")
    paths = [tiny_checkpoint, _copy(tiny_checkpoint, root, "en"), _copy(tiny_checkpoint, root, "de")]
    registry = ModelRegistry.load(paths, device="cpu")
    with ServerThread(registry, ServerConfig(host="127.0.0.1", port=0, metrics_port=0)) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def stub(address: str) -> Iterator[pb_grpc.TranslationServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.TranslationServiceStub(channel)


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[TranslationClient]:
    with TranslationClient(address, retries=0, timeout=60) as c:
        yield c


def translate(stub: pb_grpc.TranslationServiceStub, texts: list[str], **fields: object) -> pb.TranslateResponse:
    fields.setdefault("source_language", "xx")
    request = pb.TranslateRequest(texts=texts, target_language="yy", **fields)  # type: ignore[arg-type]
    return stub.Translate(request, timeout=60)


def test_lines_and_blank_lines_kept(stub: pb_grpc.TranslationServiceStub, tiny_pairs: list[tuple[str, str]]) -> None:
    (s1, t1), (s2, t2) = tiny_pairs[:2]
    response = translate(stub, [f"  {s1}\n\n{s2}\n", "   "])
    # a whitespace-only text is blank: "" (ferry.model.options policy); layout inside a text is kept
    assert [t.text for t in response.translations] == [f"  {t1}\n\n{t2}\n", ""]
    assert not response.translations[0].detected_language


def test_no_sentence_split_sends_the_text_as_one_sentence(
    stub: pb_grpc.TranslationServiceStub, tiny_pairs: list[tuple[str, str]]
) -> None:
    (s1, _), (s2, _) = tiny_pairs[:2]
    split = translate(stub, [f"{s1}\n{s2}"]).translations[0]
    whole = translate(stub, [f"{s1}\n{s2}"], no_sentence_split=True).translations[0]
    assert split.input_tokens == whole.input_tokens + 1  # one EOS per sentence


def test_html_format(stub: pb_grpc.TranslationServiceStub, tiny_pairs: list[tuple[str, str]]) -> None:
    (s1, t1), (s2, t2) = tiny_pairs[:2]
    source = f'<ul class="x"><li><b>{s1}</b></li><li>{s2}</li></ul><script>var a = "{s1}";</script>'
    response = translate(stub, [source], format=pb.TEXT_FORMAT_HTML)
    expected = f'<ul class="x"><li><b>{t1}</b></li><li>{t2}</li></ul><script>var a = "{s1}";</script>'
    assert response.translations[0].text == expected


def test_auto_routes_each_text_to_the_model_of_its_language(stub: pb_grpc.TranslationServiceStub) -> None:
    response = translate(stub, [EN, DE, EN], source_language="auto")
    detected = [(t.detected_language, t.detection_confidence) for t in response.translations]
    assert [lang for lang, _ in detected] == ["en", "de", "en"]
    assert all(0.5 < c <= 1 for _, c in detected)
    assert response.model_id == "tiny-en,tiny-de"
    alone = translate(stub, [DE], source_language="de").translations[0].text
    assert response.translations[1].text == alone


def test_auto_with_an_unserved_detected_language_is_invalid_argument(stub: pb_grpc.TranslationServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        translate(stub, [EN, FR], source_language="auto")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = info.value.details() or ""
    assert "texts[1] was detected as 'fr'" in message and "fr-yy" in message
    assert "en-yy" in message and "de-yy" in message  # the served pairs


def test_auto_without_letters_is_invalid_argument(stub: pb_grpc.TranslationServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        translate(stub, ["123", "?"], source_language="auto")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "set source_language" in (info.value.details() or "")


def test_detect_rpc(stub: pb_grpc.TranslationServiceStub) -> None:
    response = stub.Detect(pb.DetectRequest(texts=[EN, DE, FR, "42"]), timeout=60)
    best = [d.languages[0].language if d.languages else "" for d in response.detections]
    assert best == ["en", "de", "fr", ""]
    scores = [s.confidence for s in response.detections[2].languages]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_detect_rpc_limits(stub: pb_grpc.TranslationServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Detect(pb.DetectRequest(texts=[]), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts is empty" in (info.value.details() or "")


def test_client_text_options_and_detection(client: TranslationClient, tiny_pairs: list[tuple[str, str]]) -> None:
    (s1, t1), (s2, _) = tiny_pairs[:2]
    (html,) = client.translate([f"<p><i>{s1}</i></p>"], "xx", "yy", text_format="html")
    assert html.text == f"<p><i>{t1}</i></p>" and not html.detected_language
    split = client.translate([f"{s1}\n{s2}"], "xx", "yy")[0]
    whole = client.translate([f"{s1}\n{s2}"], "xx", "yy", split_sentences=False)[0]
    assert split.input_tokens == whole.input_tokens + 1
    auto = client.translate([DE, EN], "auto", "yy")
    assert [(t.detected_language, t.model_id) for t in auto] == [("de", "tiny-de,tiny-en"), ("en", "tiny-de,tiny-en")]
    detected = client.detect([FR, ""])
    assert detected[0][0][0] == "fr" and detected[1] == []
    with pytest.raises(ValueError, match="text_format='pdf'"):
        client.translate(["x"], "xx", "yy", text_format="pdf")


def test_cli_html_document_and_layout(
    address: str, tiny_checkpoint: Path, tiny_pairs: list[tuple[str, str]], tmp_path: Path
) -> None:
    from ferry.cli import main

    (s1, t1), (s2, t2) = tiny_pairs[:2]
    doc = tmp_path / "in.html"
    doc.write_text(f"<ul>\n<li>{s1}</li>\n<li><b>{s2}</b></li>\n</ul>\n", encoding="utf-8")
    expected = f"<ul>\n<li>{t1}</li>\n<li><b>{t2}</b></li>\n</ul>\n"
    local, remote = tmp_path / "local.html", tmp_path / "remote.html"
    io = ["--format", "html", "-i", str(doc)]
    assert main(["translate", "--model", str(tiny_checkpoint), *io, "-o", str(local)]) == 0
    assert main(["translate", "--server", address, "-s", "xx", "-t", "yy", *io, "-o", str(remote)]) == 0
    assert local.read_text(encoding="utf-8") == remote.read_text(encoding="utf-8") == expected


def test_cli_auto_with_a_model_of_another_language_is_an_error(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ferry.cli import main

    src = tmp_path / "in.txt"
    src.write_text(f"{EN}\n", encoding="utf-8")
    assert main(["translate", "--model", str(tiny_checkpoint), "-s", "auto", "-t", "yy", "-i", str(src)]) != 0
    assert "detected as 'en'" in capsys.readouterr().err


def test_stream_with_auto_and_html(client: TranslationClient, tiny_pairs: list[tuple[str, str]]) -> None:
    results = list(client.translate_stream(iter([EN, DE, EN]), "auto", "yy", batch_size=2))
    assert [r.detected_language for r in results] == ["en", "de", "en"]
    (s1, t1) = tiny_pairs[0]
    html = list(client.translate_stream(iter([f"<p>{s1}</p>"]), "xx", "yy", text_format="html"))
    assert [r.text for r in html] == [f"<p>{t1}</p>"]
