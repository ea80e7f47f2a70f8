"""The wire format of the LibreTranslate API: request bodies (JSON or form) to plain fields, and the
API key check. Only the wire is checked here (a field's presence and type); what the values may be
(limits, option ranges, served pairs) is checked once for every transport by the shared request path."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from ferry.model.options import MAX_BEAM_SIZE, InvalidRequestError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from ferry.text import FORMATS, TextFormat

from ..auth import bearer_token, token_matches
from ..text_routing import AUTO

# The multipart parser logs a WARNING for each malformed body before raising; the client gets a 400
# saying what was wrong, so the server's log stays quiet about it.
logging.getLogger("python_multipart").setLevel(logging.ERROR)

MAX_ALTERNATIVES = MAX_BEAM_SIZE - 1
"""Alternatives are the n-best list after the best translation, so at most ``MAX_BEAM_SIZE - 1``."""


class FieldError(InvalidRequestError):
    """A field is missing or has the wrong type (HTTP 400); the message names the field and the fix."""


class AuthError(Exception):
    """The API key is missing or wrong (HTTP 403)."""


@dataclass(frozen=True)
class TranslateFields:
    """``POST /translate`` as LibreTranslate defines it."""

    texts: tuple[str, ...]
    """``q``: one text, or several when ``batch``."""
    batch: bool
    """``q`` was a list: the answer's fields are lists too."""
    source: str
    """A language code or ``"auto"``."""
    target: str
    format: TextFormat = "text"
    alternatives: int = 0
    """Other translations to return after the best one (the n-best list)."""


# ---------------------------------------------------------------------------------------------- bodies
async def read_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's fields: a JSON object, or a form (URL-encoded or multipart), over the query
    string's. ``FieldError`` for a body over ``limit`` bytes or one that is neither."""
    chunks, size = [], 0
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FieldError(f"the request body has {declared} bytes; the limit is {limit}; send fewer or shorter texts")
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FieldError(
                f"the request body has more than {limit} bytes; the limit is {limit}; send fewer or shorter texts"
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    fields: dict[str, Any] = dict(request.query_params)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        fields.update(_collect(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))
    elif kind == "multipart/form-data":
        fields.update(await _multipart(request, body))
    elif body.strip():
        if kind and kind != "application/json" and not kind.endswith("+json") and kind != "text/plain":
            raise FieldError(
                f"unsupported Content-Type {kind!r}; send the fields as JSON (application/json) or as a form "
                "(application/x-www-form-urlencoded or multipart/form-data)"
            )
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise FieldError(f'the body is not valid JSON ({exc}); send an object such as {{"q": "Hello"}}') from None
        if not isinstance(parsed, dict):
            raise FieldError(f'the JSON body is a {type(parsed).__name__}; send an object such as {{"q": "Hello"}}')
        fields.update(parsed)
    return fields


def _collect(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Form pairs to fields; a repeated name (``q=a&q=b``) becomes a list."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            out[key] = [*out[key], value] if isinstance(out[key], list) else [out[key], value]
        else:
            out[key] = value
    return out


async def _multipart(request: Request, body: bytes) -> dict[str, Any]:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, receive=replay).form() as form:
            items = list(form.multi_items())
    except Exception as exc:  # a malformed multipart body (the parser's errors have no common base)
        raise FieldError(f"the multipart form cannot be read ({exc}); send JSON or a URL-encoded form") from None
    for key, value in items:
        if isinstance(value, UploadFile):
            raise FieldError(f"{key} is a file upload; files are not supported, send the text in the field")
    return _collect(items)


# ---------------------------------------------------------------------------------------------- fields
def text_field(fields: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise FieldError(f"{name} is missing; {_HINTS.get(name, 'send it')}")
        return default
    if not isinstance(value, str):
        raise FieldError(f"{name} must be a string, got {_type(value)}; {_HINTS.get(name, '')}".rstrip("; "))
    return value.strip()


def texts_field(fields: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    """``q`` as texts and whether it was a list."""
    q = fields.get("q")
    if q is None:
        raise FieldError(f"q is missing; {_HINTS['q']}")
    if isinstance(q, str):
        return (q,), False
    if isinstance(q, list):
        for i, item in enumerate(q):
            if not isinstance(item, str):
                raise FieldError(f"q[{i}] must be a string, got {_type(item)}")
        if not q:
            raise FieldError(f"q is an empty list; {_HINTS['q']}")
        return tuple(q), True
    raise FieldError(f"q must be a string or a list of strings, got {_type(q)}")


def int_field(fields: dict[str, Any], name: str, low: int, high: int, default: int = 0) -> int:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FieldError(f"{name}={value!r} is out of range; allowed: an integer, {low} <= {name} <= {high}")
    return value


def translate_fields(fields: dict[str, Any]) -> TranslateFields:
    texts, batch = texts_field(fields)
    fmt = text_field(fields, "format", required=False, default="text").lower()
    if fmt not in FORMATS:
        raise FieldError(f"format={fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    return TranslateFields(
        texts=texts,
        batch=batch,
        source=text_field(fields, "source").lower(),
        target=text_field(fields, "target").lower(),
        format=fmt,  # checked against FORMATS above
        alternatives=int_field(fields, "alternatives", 0, MAX_ALTERNATIVES),
    )


_HINTS = {
    "q": "send the text to translate as q (a string, or a list of strings)",
    "source": f"send a language code from GET /languages, or {AUTO!r} to detect it",
    "target": "send a language code from GET /languages",
}


def _type(value: object) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


# ---------------------------------------------------------------------------------------------- auth
def check_key(request: Request, fields: dict[str, Any], token: str | None) -> None:
    """With ``token`` set, the request must carry it as ``api_key`` or ``Authorization: Bearer``
    (scheme case-insensitive); ``AuthError`` otherwise."""
    if not token:
        return
    sent: list[str] = []
    key = fields.get("api_key")
    if isinstance(key, str) and key:
        sent.append(key)
    bearer = bearer_token(request.headers.get("authorization"))
    if bearer is not None:
        sent.append(bearer)
    if not sent:
        raise AuthError(
            "this server requires an API key: send it as the api_key field or as the header "
            "'Authorization: Bearer <key>'"
        )
    if not any(token_matches(s, token) for s in sent):
        raise AuthError("invalid API key; check the api_key field or the 'Authorization: Bearer' header")
