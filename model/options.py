"""What a translation request is, once for every entry point: options, limits, results and errors.

``ferry.model.options`` is pure Python (no torch, no grpc), so the Translator, the engine, the gRPC
servicer, the HTTP API and the command line all import the same definitions:

- ``DecodeOptions``: how texts are decoded (beam, lengths, n-best, scores) and split (``text``); its
  ``validate`` is the one place the allowed ranges live (``MAX_BEAM_SIZE``, ``MAX_LENGTH_PENALTY``).
- ``TranslationRequest``: texts + options + routing (languages or model id) + deadline; what a transport
  builds from its wire format.
- ``TranslationResult``: one text's translation and n-best list.
- ``TranslationError`` and its subclasses, each with a transport-neutral ``Status``; ``status_of(exc)`` is
  the one mapping from an exception to a status (gRPC code name and HTTP status).

Policies decided here (the same offline and in the server):
- Blank texts (empty or whitespace only) translate to ``""`` without model work (``blank_result``).
- A text longer than the model's limit is *rejected* with ``InputTooLongError`` (never truncated).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from ferry.text import TextOptions

MAX_BEAM_SIZE = 32
"""Largest ``beam_size`` accepted anywhere."""
MAX_LENGTH_PENALTY = 10.0
"""Largest ``length_penalty`` accepted anywhere (the smallest is 0)."""
MAX_LENGTH_RATIO = 2.0
"""Default cap on output length: ``MAX_LENGTH_RATIO * source_tokens + MAX_LENGTH_EXTRA``."""
MAX_LENGTH_EXTRA = 10


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise ``ValueError`` naming the option and its allowed range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is out of range; allowed: {low} <= {name} <= {high}")


# ---------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class DecodeOptions:
    """How one request is translated: decoding settings plus how its texts are split (``text``).
    The arguments of ``Translator.translate_batch``, ``Engine.submit``, the gRPC ``DecodingOptions``
    message and the HTTP API's options."""

    beam_size: int = 4
    """Beam width; 1 is greedy search. Each sentence takes ``beam_size`` rows of the running batch."""
    max_length: int | None = None
    """Most output tokens (EOS included) per sentence; ``None``: ``2 * source tokens + 10``."""
    length_penalty: float = 1.0
    """Hypothesis score = sum of log-probabilities / length ** length_penalty."""
    num_hypotheses: int = 1
    """Size of the returned n-best list (at most ``beam_size``)."""
    return_scores: bool = False
    """Fill ``TranslationResult.score``/``scores``."""
    text: TextOptions = field(default_factory=TextOptions)
    """How request texts become sentences (``ferry.text.segment``) before decoding."""

    def validate(self, max_positions: int) -> None:
        """Raise ``ValueError`` naming the first option out of range and its allowed range;
        ``max_positions`` is the model's limit (``Backend.max_positions``)."""
        check_range("beam_size", self.beam_size, 1, MAX_BEAM_SIZE)
        if self.max_length is not None:
            check_range("max_length", self.max_length, 1, max_positions)
        check_range("length_penalty", self.length_penalty, 0.0, MAX_LENGTH_PENALTY)
        check_range("num_hypotheses", self.num_hypotheses, 1, self.beam_size)
        if not isinstance(self.text, TextOptions):
            raise ValueError(f"text must be a TextOptions, got {type(self.text).__name__}")


def output_limit(source_tokens: int, max_length: int | None, max_positions: int) -> int:
    """Most tokens (EOS included) one sentence of ``source_tokens`` tokens may produce."""
    limit = int(MAX_LENGTH_RATIO * source_tokens + MAX_LENGTH_EXTRA)
    if max_length is not None:
        limit = min(limit, max_length)
    return max(1, min(limit, max_positions))


def check_texts(texts: object) -> list[str]:
    """``texts`` as a list of strings; ``ValueError`` for a single string or a non-string item."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    if not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__}, expected str")
    return out


# ---------------------------------------------------------------------------------------------- request
@dataclass(frozen=True)
class TranslationRequest:
    """One request as every transport describes it (gRPC ``TranslateRequest``, HTTP body, CLI batch)."""

    texts: tuple[str, ...]
    """Texts to translate; each gives one ``TranslationResult``, in order."""
    options: DecodeOptions = field(default_factory=DecodeOptions)
    source_language: str = ""
    """Source language code; with ``target_language`` picks the model unless ``model_id`` is set."""
    target_language: str = ""
    model_id: str = ""
    """A served model's id; empty: route by language pair."""
    deadline: float | None = None
    """``time.monotonic()`` time after which the request fails with ``DeadlineExceededError``."""
    request_id: str = ""
    """Echoed back to the client."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(check_texts(self.texts)))
        if not isinstance(self.options, DecodeOptions):
            raise ValueError(f"options must be a DecodeOptions, got {type(self.options).__name__}")


# ---------------------------------------------------------------------------------------------- results
@dataclass
class TranslationResult:
    """One input's translation; ``hypotheses``/``scores`` hold the n-best list (best first)."""

    text: str
    score: float | None = None
    hypotheses: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0


def is_blank(text: str) -> bool:
    """Blank texts are not sent to the model (the one place this is decided)."""
    return not text.strip()


def blank_result(options: DecodeOptions) -> TranslationResult:
    """The translation of a blank text: ``""`` (score 0 when scores are asked for)."""
    return TranslationResult(text="", score=0.0 if options.return_scores else None)


# ---------------------------------------------------------------------------------------------- errors
class Status(enum.Enum):
    """Transport-neutral outcome of a failed request: the gRPC code name and the HTTP status."""

    INVALID_ARGUMENT = ("INVALID_ARGUMENT", 400)
    RESOURCE_EXHAUSTED = ("RESOURCE_EXHAUSTED", 429)
    UNAVAILABLE = ("UNAVAILABLE", 503)
    DEADLINE_EXCEEDED = ("DEADLINE_EXCEEDED", 504)
    INTERNAL = ("INTERNAL", 500)

    @property
    def grpc_name(self) -> str:
        """Name of the ``grpc.StatusCode`` member."""
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class TranslationError(Exception):
    """Base of every error a translation request can end with; ``status`` says how transports report it."""

    status = Status.INTERNAL


EngineError = TranslationError
"""The engine's name for the base class (kept for callers that catch ``EngineError``)."""


class InvalidRequestError(TranslationError, ValueError):
    """The request itself is wrong (option out of range, unknown model, text too long)."""

    status = Status.INVALID_ARGUMENT


class UnknownModelError(InvalidRequestError):
    """No served model matches the request (the message lists what is served)."""


class InputTooLongError(InvalidRequestError):
    """One text has more source tokens than the model or server accepts."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        self.index = index
        self.tokens = tokens
        self.limit = limit
        super().__init__(
            f"texts[{index}] has {tokens} tokens (end-of-sentence token included); the limit is {limit} "
            "tokens per text; split it into shorter sentences"
        )


class QueueFullError(TranslationError):
    """The waiting queue cannot take the request's sentences now (backpressure)."""

    status = Status.RESOURCE_EXHAUSTED


class EngineClosedError(TranslationError):
    """The engine is draining or stopped and admits nothing new (retry elsewhere/later)."""

    status = Status.UNAVAILABLE

    def __init__(self, message: str = "") -> None:
        super().__init__(message or "the engine is shutting down and accepts no new requests; retry on another server")


class DeadlineExceededError(TranslationError):
    """The request's deadline passed before all of its sentences were translated."""

    status = Status.DEADLINE_EXCEEDED


class TranslationFailedError(TranslationError):
    """The model failed on one sentence even when it ran alone (e.g. out of memory); carries the reason."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"translating texts[{index}] failed: {reason}")


def status_of(exc: BaseException) -> Status:
    """The one mapping from an exception to a status: a ``TranslationError`` carries its own, any other
    ``ValueError`` is a bad request, anything else is INTERNAL (a bug: log it)."""
    if isinstance(exc, TranslationError):
        return exc.status
    if isinstance(exc, ValueError):
        return Status.INVALID_ARGUMENT
    return Status.INTERNAL
