"""``TranslationService`` (the transport-neutral request path) and the shared bearer parser, without a model."""

from __future__ import annotations

import asyncio

import pytest
from ferry.model.options import EngineClosedError, InvalidRequestError, Status, TranslationRequest, status_of
from ferry.server.auth import bearer_token, token_matches
from ferry.server.config import RequestLimits
from ferry.server.registry import ModelRegistry
from ferry.server.service import TranslationService


def make_service() -> TranslationService:
    return TranslationService(ModelRegistry(), RequestLimits(max_texts=2, max_text_chars=5))


def test_limits_are_invalid_request_errors_naming_the_limit() -> None:
    service = make_service()
    with pytest.raises(InvalidRequestError, match="texts is empty; send 1 to 2 texts"):
        service.check_texts([])
    with pytest.raises(InvalidRequestError, match="texts has 3 entries; the limit is 2"):
        service.check_texts(["a", "b", "c"])
    with pytest.raises(InvalidRequestError, match=r"texts\[1\] has 6 characters; the limit is 5"):
        service.check_texts(["a", "bbbbbb"])


def test_unknown_pair_and_detect_limits_map_to_invalid_argument() -> None:
    service = make_service()
    with pytest.raises(InvalidRequestError) as caught:
        asyncio.run(service.translate(TranslationRequest(texts=("hi",), source_language="en", target_language="de")))
    assert status_of(caught.value) is Status.INVALID_ARGUMENT
    assert "en-de is not served" in str(caught.value)
    with pytest.raises(InvalidRequestError, match="texts is empty"):
        asyncio.run(service.detect([]))


def test_calls_are_counted_and_refused_while_draining() -> None:
    service = make_service()
    with service.call("Translate") as code:
        assert service.inflight == 1
        assert code == ["OK"]
    assert service.inflight == 0
    service.begin_drain()
    with pytest.raises(EngineClosedError, match="shutting down") as caught, service.call("Translate"):
        pass
    assert status_of(caught.value) is Status.UNAVAILABLE
    service.close()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("  bearer   abc  ", "abc"),
        ("BEARER abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
        (b"Bearer abc", None),
    ],
)
def test_bearer_token(header: object, token: str | None) -> None:
    assert bearer_token(header) == token


def test_token_matches() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
