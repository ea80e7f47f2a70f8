"""The OpenAPI 3.1 description served at ``/openapi.json`` (written out: Starlette gives none)."""

from __future__ import annotations

from typing import Any

import ferry

from .fields import MAX_ALTERNATIVES

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_DETECTED = {
    "type": "object",
    "properties": {"language": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 100}},
}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "missing or invalid field, unsupported language pair, or a limit exceeded (the message names it)",
        403: "the server requires an API key and none or a wrong one was sent",
        429: "the server's queue is full; retry later",
        503: "the server is shutting down; retry (another replica)",
    }
    return {
        str(c): {
            "description": meaning[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": schema}, "application/x-www-form-urlencoded": {"schema": schema}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


TRANSLATE_BODY = {
    "type": "object",
    "required": ["q", "source", "target"],
    "properties": {
        "q": {"oneOf": [{"type": "string"}, _STRINGS], "description": "text, or a list of texts"},
        "source": {"type": "string", "description": "language code from /languages, or 'auto'"},
        "target": {"type": "string"},
        "format": {"type": "string", "enum": ["text", "html"], "default": "text"},
        "alternatives": {"type": "integer", "minimum": 0, "maximum": MAX_ALTERNATIVES, "default": 0},
        "api_key": {"type": "string", "description": "or the header 'Authorization: Bearer <key>'"},
    },
}
TRANSLATE_ANSWER = {
    "type": "object",
    "properties": {
        "translatedText": {"oneOf": [{"type": "string"}, _STRINGS]},
        "detectedLanguage": {"oneOf": [_DETECTED, {"type": "array", "items": _DETECTED}]},
        "alternatives": {"oneOf": [_STRINGS, {"type": "array", "items": _STRINGS}]},
    },
    "required": ["translatedText"],
}
LANGUAGE = {
    "type": "object",
    "properties": {"code": {"type": "string"}, "name": {"type": "string"}, "targets": _STRINGS},
}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ferry translation API (LibreTranslate-compatible)",
            "version": ferry.__version__,
            "description": "Served by `ferry serve` next to its gRPC API, on the same engines; see docs/http.md.",
        },
        "paths": {
            "/translate": {
                "post": {
                    "summary": "Translate text",
                    "requestBody": _body(TRANSLATE_BODY),
                    "responses": {"200": _json("the translation", TRANSLATE_ANSWER), **_errors(400, 403, 429, 503)},
                }
            },
            "/detect": {
                "post": {
                    "summary": "Detect the language of a text",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["q"],
                            "properties": {"q": {"type": "string"}, "api_key": {"type": "string"}},
                        }
                    ),
                    "responses": {
                        "200": _json("candidate languages, best first", {"type": "array", "items": _DETECTED}),
                        **_errors(400, 403, 503),
                    },
                }
            },
            "/languages": {
                "get": {
                    "summary": "Languages of the hosted models",
                    "responses": {"200": _json("languages and their targets", {"type": "array", "items": LANGUAGE})},
                }
            },
            "/health": {
                "get": {
                    "summary": "Whether the server takes new work",
                    "responses": {
                        "200": _json("serving", {"type": "object", "properties": {"status": {"const": "serving"}}}),
                        "503": _json("draining", {"type": "object", "properties": {"status": {"const": "draining"}}}),
                    },
                }
            },
        },
        "components": {"schemas": {"Error": _ERROR}},
    }
