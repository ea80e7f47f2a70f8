"""Typed results of the client: plain dataclasses built from the response messages."""

from __future__ import annotations

from dataclasses import dataclass, field

from ferry.proto.v1 import translation_pb2 as pb


@dataclass(frozen=True)
class Translation:
    """One input's translation. ``score``/``scores`` are None/empty unless scores were requested;
    ``hypotheses`` holds the n-best texts (best first) when more than one was requested."""

    text: str
    score: float | None = None
    hypotheses: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    model_id: str = ""
    model_version: str = ""
    detected_language: str = ""
    """With source_language "auto": the language detected for this text (else empty)."""
    detection_confidence: float = 0.0
    """The detector's confidence in ``detected_language`` (0-1)."""


def translations_from_proto(response: pb.TranslateResponse, *, with_scores: bool) -> list[Translation]:
    return [
        Translation(
            text=t.text,
            score=t.score if with_scores else None,
            hypotheses=[h.text for h in t.hypotheses] or [t.text],
            scores=([h.score for h in t.hypotheses] or [t.score]) if with_scores else [],
            input_tokens=t.input_tokens,
            output_tokens=t.output_tokens,
            model_id=response.model_id,
            model_version=response.model_version,
            detected_language=t.detected_language,
            detection_confidence=t.detection_confidence,
        )
        for t in response.translations
    ]


@dataclass(frozen=True)
class Limits:
    max_texts: int
    max_text_chars: int
    max_input_tokens: int
    max_beam_size: int
    max_length: int
    max_message_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    version: str
    source_language: str
    target_language: str
    device: str
    dtype: str
    limits: Limits

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> ModelInfo:
        lim = m.limits
        return cls(
            model_id=m.model_id,
            version=m.version,
            source_language=m.source_language,
            target_language=m.target_language,
            device=m.device,
            dtype=m.dtype,
            limits=Limits(
                max_texts=lim.max_texts,
                max_text_chars=lim.max_text_chars,
                max_input_tokens=lim.max_input_tokens,
                max_beam_size=lim.max_beam_size,
                max_length=lim.max_length,
                max_message_bytes=lim.max_message_bytes,
            ),
        )
