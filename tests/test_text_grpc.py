"""gRPC side of ferry.text: format/no_sentence_split mapped onto the text stage, source_language "auto"
routed to the model of the detected language, detection fields, the Detect RPC and their errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
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
def stub(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.TranslationServiceStub]:
    root = tmp_path_factory.mktemp("text-grpc")
    paths = [tiny_checkpoint, _copy(tiny_checkpoint, root, "en"), _copy(tiny_checkpoint, root, "de")]
    registry = ModelRegistry.load(paths, device="cpu")
    with ServerThread(registry, ServerConfig(host="127.0.0.1", port=0, metrics_port=0)) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.TranslationServiceStub(channel)


def translate(stub: pb_grpc.TranslationServiceStub, texts: list[str], **fields: object) -> pb.TranslateResponse:
    fields.setdefault("source_language", "xx")
    request = pb.TranslateRequest(texts=texts, target_language="yy", **fields)  # type: ignore[arg-type]
    return stub.Translate(request, timeout=60)


def test_lines_and_blank_lines_kept(stub: pb_grpc.TranslationServiceStub, tiny_pairs: list[tuple[str, str]]) -> None:
    (s1, t1), (s2, t2) = tiny_pairs[:2]
    response = translate(stub, [f"  {s1}\n\n{s2}\n", "   "])
    assert [t.text for t in response.translations] == [f"  {t1}\n\n{t2}\n", "   "]
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
